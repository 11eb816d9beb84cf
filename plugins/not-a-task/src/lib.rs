//! A WebAssembly component that exports no `run`: the host must reject it.

/// Not what a task exports.
#[unsafe(no_mangle)]
pub extern "C" fn hello() -> u32 {
    42
}
