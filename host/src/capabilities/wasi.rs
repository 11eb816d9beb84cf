//! WASI for a task: one preopened directory at its host path, nothing else.

use std::path::Path;

use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};

/// Bytes of stdout (and of stderr) kept per try; the rest is dropped.
pub const MAX_CAPTURED_OUTPUT: usize = 1 << 20;

/// Captured stdout and stderr of a try.
#[derive(Clone)]
pub struct CapturedOutput {
    /// Standard output.
    pub stdout: MemoryOutputPipe,
    /// Standard error.
    pub stderr: MemoryOutputPipe,
}

/// A WASI context with no network, no environment, no arguments, no stdin, and
/// `staging` preopened at the same absolute path it has on the host.
pub fn sandbox_ctx(staging: &Path) -> wasmtime::Result<(WasiCtx, CapturedOutput)> {
    let captured = CapturedOutput {
        stdout: MemoryOutputPipe::new(MAX_CAPTURED_OUTPUT),
        stderr: MemoryOutputPipe::new(MAX_CAPTURED_OUTPUT),
    };
    let guest_path = staging.to_str().ok_or_else(|| {
        wasmtime::Error::msg(format!("staging path {} is not UTF-8", staging.display()))
    })?;
    let mut builder = WasiCtxBuilder::new();
    builder
        .stdout(captured.stdout.clone())
        .stderr(captured.stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }))
        .allow_blocking_current_thread(true)
        .preopened_dir(staging, guest_path, FsPerms::ReadWrite)?;
    Ok((builder.build(), captured))
}
