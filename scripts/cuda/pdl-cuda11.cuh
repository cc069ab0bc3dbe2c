// Forced include (CMAKE_CUDA_FLAGS="-include .../pdl-cuda11.cuh") for building
// the pinned ggml with CUDA 11.8, used by scripts/cuda-build.sh.
//
// ggml's CUDA backend uses programmatic dependent launch on Hopper (sm_90)
// when CUDART_VERSION >= 11080, but the two device-side calls it makes exist
// in the CUDA runtime headers only from CUDA 12 on. CUDA 11.8 already knows
// sm_90 and the PTX instructions behind them (PTX ISA 7.8, `griddepcontrol`),
// so they are supplied here for older toolkits. Without a Hopper GPU, or with
// GGML_CUDA_PDL=0 at run time, they are never reached.
#pragma once
#include <cuda_runtime.h>

#if defined(__CUDACC__) && defined(CUDART_VERSION) && CUDART_VERSION < 12000
static __device__ __forceinline__ void cudaGridDependencySynchronize(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

static __device__ __forceinline__ void cudaTriggerProgrammaticLaunchCompletion(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}
#endif
