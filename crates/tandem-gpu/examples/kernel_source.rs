//! Prints the CUDA source NVRTC compiles when a device opens
//! (`tandem_gpu::kernel_source`), for `tools/gpu/nvrtc_check.py`.

fn main() {
    print!("{}", tandem_gpu::kernel_source::kernel_source());
}
