"""Build of langevin_kernels._C (metadata lives in pyproject.toml).

C++ CPU kernels are always built. CUDA kernels (csrc/cuda/*.cu) are added when a
CUDA build of torch and a CUDA toolkit are present. Environment switches:

  LANGEVIN_CUDA=auto|1|0   auto (default) builds CUDA when possible; 1 requires it
                           (the build fails with the reason); 0 skips it.
  TORCH_CUDA_ARCH_LIST     GPU architectures; defaults to "8.0;9.0" (A100, H100/H200)
                           when unset, which also makes GPU-less machines work.
  CUDA_HOME                the toolkit (on machines where nvcc is a wrapper in
                           /usr/local/bin, set CUDA_HOME=/usr/local/cuda).

Always install with --no-build-isolation so the extension compiles against the
torch that is installed (see README, "Building").
"""
import glob
import os

from setuptools import setup
from torch.utils import cpp_extension

HERE = os.path.dirname(os.path.abspath(__file__))


def cuda_build_decision():
    """Return (build_cuda, reason)."""
    import torch

    mode = os.environ.get("LANGEVIN_CUDA", "auto").lower()
    if mode not in ("auto", "1", "0"):
        raise SystemExit(f"LANGEVIN_CUDA={mode!r}: allowed values are auto, 1, 0")
    if mode == "0":
        return False, "LANGEVIN_CUDA=0"
    reasons = []
    if torch.version.cuda is None:
        reasons.append(f"torch {torch.__version__} is a CPU-only build")
    if cpp_extension.CUDA_HOME is None:
        reasons.append("no CUDA toolkit found (set CUDA_HOME)")
    if not glob.glob(os.path.join(HERE, "csrc", "cuda", "*.cu")):
        reasons.append("no CUDA sources in csrc/cuda")
    if reasons:
        if mode == "1":
            raise SystemExit("LANGEVIN_CUDA=1 but the CUDA kernels cannot be built: " + "; ".join(reasons))
        return False, "; ".join(reasons)
    return True, f"torch CUDA {torch.version.cuda}, toolkit {cpp_extension.CUDA_HOME}"


def extension():
    build_cuda, reason = cuda_build_decision()
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cxx = ["-O3", "-fopenmp"]  # torch picks the C++ standard its headers need
    if build_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        nvcc = ["-O3", "-lineinfo"]
        ext = cpp_extension.CUDAExtension(
            "langevin_kernels._C", sources,
            extra_compile_args={"cxx": cxx + ["-DLANGEVIN_WITH_CUDA"], "nvcc": nvcc},
            extra_link_args=["-fopenmp"],
        )
        print(f"langevin-kernels: building C++ CPU + CUDA kernels ({reason}; "
              f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']})")
    else:
        ext = cpp_extension.CppExtension(
            "langevin_kernels._C", sources, extra_compile_args=cxx, extra_link_args=["-fopenmp"],
        )
        print(f"langevin-kernels: building C++ CPU kernels only; CUDA skipped: {reason}")
    return ext


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(no_python_abi_suffix=False)},
)
