"""arjax: autoregressive image and video generation in JAX."""
from setuptools import find_packages, setup

NOTEBOOKS = ["nbclient==0.11.0", "nbformat==5.11.1", "ipykernel==7.4.0", "jupyter-client==8.10.0"]  # run headless

setup(
    name="arjax",
    version="0.1.0",
    description="Autoregressive visual generation in JAX/Flax: one transformer, one mask language.",
    python_requires=">=3.10",
    packages=find_packages(include=["arjax", "arjax.*", "kernels_pallas", "kernels_pallas.*"]),
    package_data={"arjax.nn": ["*.cc", "*.h"]},  # the CPU kernels (decode attention, int8 Dense), built on first use
    install_requires=[
        "jax==0.10.2",
        "jaxlib==0.10.2",
        "flax==0.12.8",
        "optax==0.2.8",
        "orbax-checkpoint==0.12.8",
        "grain==0.2.18",
        "ml-collections==1.1.0",
        "chex==0.1.92",
        "einops==0.8.2",
        "tqdm==4.70.1",
        "pillow==13.0.0",
        "numpy==2.4.6",
        "scipy==1.17.1",
        "tensorboardX==2.6.5",
        "absl-py==2.5.1",
        "imageio==2.38.1",  # GIF output of scripts/stream_video.py (MP4 needs imageio-ffmpeg)
    ],
    extras_require={
        "test": ["pytest==9.2.0", "hypothesis==6.170.15", "pytest-xdist==3.8.0", "tensorflow-datasets==4.9.10",
                 "torch==2.13.0", "safetensors==0.8.0", *NOTEBOOKS],
        "tfds": ["tensorflow-datasets==4.9.10"],
        "torch": ["torch==2.13.0", "safetensors==0.8.0"],
        "notebooks": NOTEBOOKS,
    },
)
