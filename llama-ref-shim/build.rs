//! Compiles the C++ bridge to llama.cpp's memory breakdown.

fn main() {
    println!("cargo:rerun-if-changed=src/breakdown.cpp");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file("src/breakdown.cpp")
        .compile("shardline_llama_ref_shim");
}
