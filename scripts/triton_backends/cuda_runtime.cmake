# Included after every project() of the backend builds (CMAKE_PROJECT_INCLUDE).
#
# dali_backend links CUDA::cudart and includes the CUDA runtime and NVTX headers even when built with
# TRITON_ENABLE_GPU=OFF, but only calls find_package(CUDAToolkit) with it ON, and there is no CUDA
# toolkit here. This defines the one target it needs instead: the CUDA runtime that the tritonserver of
# nvidia-pytriton already loads (so the process holds one copy), with the headers of the
# nvidia-cuda-runtime/-nvcc/-nvtx wheels of the same CUDA release.
if(NOT TARGET CUDA::cudart)
  add_library(CUDA::cudart SHARED IMPORTED GLOBAL)
  set_target_properties(CUDA::cudart PROPERTIES
    IMPORTED_LOCATION "${TRITON_BUNDLE_CUDART}"
    INTERFACE_INCLUDE_DIRECTORIES "${TRITON_BUNDLE_CUDA_INCLUDE_DIRS}")
endif()
