//! Records where libtorch's shared libraries are (torch-sys reports the
//! directory it linked against) as the binaries' rpath, so `gridmesh-block`
//! and its tests run without LD_LIBRARY_PATH.

fn main() {
    let lib_dir = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .expect("torch-sys reports the libtorch library directory (links = \"tch\")");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
}
