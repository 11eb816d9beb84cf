//! WASI for a task: one preopened directory at its host path, nothing else,
//! and no links made in it.

use std::path::Path;

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::bindings::sync::filesystem::types::{Descriptor, ErrorCode, PathFlags};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiView};

use super::log::LogSink;

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

/// Registers WASI (synchronous p2) with the link calls refused, whose
/// refusals are logged to the [`LogSink`] `log` returns.
pub fn add_to_linker<T: WasiView + 'static>(
    linker: &mut Linker<T>,
    log: fn(&mut T) -> &mut LogSink,
) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    refuse_links(linker, log)
}

/// The WASI filesystem interface whose link calls [`refuse_links`] replaces.
const FILESYSTEM_TYPES: &str = "wasi:filesystem/types@0.2.12";

/// Replaces `symlink-at` and `link-at` of the WASI filesystem with calls that
/// fail with `not-permitted`: a task may not make links in staging. Host
/// threads open files there too (DuckDB, transfers), and a link is how a path
/// in staging would lead them elsewhere. Tasks have no use for links.
fn refuse_links<T: 'static>(
    linker: &mut Linker<T>,
    log: fn(&mut T) -> &mut LogSink,
) -> wasmtime::Result<()> {
    fn refused(log: &mut LogSink, what: &str) -> Result<(), ErrorCode> {
        log.line(
            "warn",
            &format!("[sluice] refused: {what}; tasks cannot make links in staging"),
        );
        Err(ErrorCode::NotPermitted)
    }
    linker.allow_shadowing(true);
    let mut types = linker.instance(FILESYSTEM_TYPES)?;
    types.func_wrap(
        "[method]descriptor.symlink-at",
        move |mut store: StoreContextMut<'_, T>,
              (_dir, target, path): (Resource<Descriptor>, String, String)| {
            let what = format!("symbolic link `{path}` -> `{target}`");
            Ok((refused(log(store.data_mut()), &what),))
        },
    )?;
    types.func_wrap(
        "[method]descriptor.link-at",
        move |mut store: StoreContextMut<'_, T>,
              (_dir, _flags, existing, _new_dir, path): (
            Resource<Descriptor>,
            PathFlags,
            String,
            Resource<Descriptor>,
            String,
        )| {
            let what = format!("hard link `{path}` to `{existing}`");
            Ok((refused(log(store.data_mut()), &what),))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}
