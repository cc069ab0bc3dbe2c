// Tests only. llama.cpp reports what each device's buffers would take (in its
// no_alloc mode as well) through `llama_get_memory_breakdown`, a C++ function
// returning a std::map; this file turns it into a C call. It is declared here
// rather than through llama.cpp's internal header (src/llama-ext.h, not
// installed by the crate's build): the value type below has the layout of
// llama.cpp's entry (three byte counts: model, context, compute), and the
// linker matches the function by its name and parameters only.
#include <cstddef>
#include <map>

struct llama_context;
struct ggml_backend_buffer_type;

// Not in an anonymous namespace: that would give the function below
// internal linkage, and it must bind to llama.cpp's.
struct shardline_breakdown_entry {
    size_t model = 0;
    size_t context = 0;
    size_t compute = 0;
};

std::map<ggml_backend_buffer_type *, shardline_breakdown_entry> llama_get_memory_breakdown(const llama_context * ctx);

// Writes up to `cap` entries (buffer type, model, context and compute bytes)
// and returns how many there are in all.
extern "C" size_t shardline_llama_memory_breakdown(const llama_context * ctx, void ** bufts, size_t * model,
                                                   size_t * context, size_t * compute, size_t cap) {
    size_t n = 0;
    for (const auto & [buft, e] : llama_get_memory_breakdown(ctx)) {
        if (n < cap) {
            bufts[n] = buft;
            model[n] = e.model;
            context[n] = e.context;
            compute[n] = e.compute;
        }
        n++;
    }
    return n;
}
