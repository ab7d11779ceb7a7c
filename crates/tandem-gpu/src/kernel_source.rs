//! The CUDA source NVRTC compiles when a device opens: `cuda/common.cuh`
//! (types, half and bfloat16 conversions), the i-quants' lookup tables
//! generated from tandem-kernels' (one copy of ggml's constants in the
//! repository), `cuda/dequant.cuh` (every stored type's element decoder)
//! and `cuda/kernels.cu`. Not behind the `cuda` feature: the host test of
//! the decoders and `tools/gpu/nvrtc_check.py` (through the
//! `kernel_source` example) compile the same text without a GPU.

use std::fmt::Write;

use tandem_kernels::grid_tables as g;

pub const COMMON: &str = include_str!("cuda/common.cuh");
pub const DEQUANT: &str = include_str!("cuda/dequant.cuh");
pub const KERNELS: &str = include_str!("cuda/kernels.cu");

/// The lookup tables as `__device__` arrays, named as in `dequant.cuh`.
pub fn grid_tables() -> String {
    let mut s = String::from("// ---- i-quant tables (generated from tandem-kernels' grids.rs)\n");
    table(
        &mut s,
        "unsigned char",
        "KSIGNS_IQ2XS",
        g::KSIGNS_IQ2XS.iter().map(|&v| u64::from(v)),
    );
    for (name, t) in [
        ("IQ2XXS_GRID", &g::IQ2XXS_GRID[..]),
        ("IQ2XS_GRID", &g::IQ2XS_GRID[..]),
        ("IQ2S_GRID", &g::IQ2S_GRID[..]),
        ("IQ1S_GRID", &g::IQ1S_GRID[..]),
    ] {
        table(&mut s, "unsigned long long", name, t.iter().copied());
    }
    for (name, t) in [
        ("IQ3XXS_GRID", &g::IQ3XXS_GRID[..]),
        ("IQ3S_GRID", &g::IQ3S_GRID[..]),
    ] {
        table(
            &mut s,
            "unsigned int",
            name,
            t.iter().map(|&v| u64::from(v)),
        );
    }
    s
}

fn table(s: &mut String, ty: &str, name: &str, values: impl ExactSizeIterator<Item = u64>) {
    let n = values.len();
    let suffix = if ty == "unsigned long long" {
        "ULL"
    } else {
        "u"
    };
    let _ = write!(s, "__device__ const {ty} {name}[{n}] = {{");
    for (i, v) in values.enumerate() {
        if i % 8 == 0 {
            s.push_str("\n    ");
        }
        let _ = write!(s, "0x{v:x}{suffix}, ");
    }
    s.push_str("\n};\n");
}

/// The whole source, in compilation order.
pub fn kernel_source() -> String {
    [COMMON, &grid_tables(), DEQUANT, KERNELS].concat()
}
