// ggml's RPC server, built by CMake straight from the pinned llama.cpp
// sources, for machines with a GPU toolkit but no Rust toolchain (the
// device check in scripts/gpu-check.sh). It serves every GPU ggml finds
// (else the CPU) on the endpoint given, like `shardline worker`, which is
// the same server code behind a Rust front end.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "ggml-backend.h"
#include "ggml-rpc.h"

int main(int argc, char ** argv) {
    const std::string endpoint = argc > 1 ? argv[1] : "127.0.0.1:50052";
    std::vector<ggml_backend_dev_t> devices;
    for (size_t i = 0; i < ggml_backend_dev_count(); i++) {
        ggml_backend_dev_t d = ggml_backend_dev_get(i);
        if (ggml_backend_dev_type(d) == GGML_BACKEND_DEVICE_TYPE_GPU) {
            devices.push_back(d);
        }
    }
    if (devices.empty()) {
        devices.push_back(ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU));
    }
    for (auto * d : devices) {
        size_t free = 0, total = 0;
        ggml_backend_dev_memory(d, &free, &total);
        std::printf("device %s (%s): %zu MiB free of %zu\n", ggml_backend_dev_name(d),
                    ggml_backend_dev_description(d), free >> 20, total >> 20);
    }
    std::printf("serving on %s\n", endpoint.c_str());
    std::fflush(stdout);
    const size_t threads = std::thread::hardware_concurrency();
    ggml_backend_rpc_start_server(endpoint.c_str(), nullptr, threads, devices.size(), devices.data());
    return 0;
}
