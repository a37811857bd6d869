"""DiSA's annealed head steps: linear from `steps` to `steps_end` over the sample; off when steps_end <= 0."""
import numpy as np

from arjax.sampling import schedules


def test_annealed_steps():
  assert schedules.annealed_steps(25, 0, 0.7) == 25
  np.testing.assert_array_equal([int(schedules.annealed_steps(25, 5, p)) for p in (0, 0.5, 1)], [25, 15, 5])
  assert [int(schedules.annealed_steps(50, 10, p)) for p in (0.0, 0.5, 1.0)] == [50, 30, 10]
