//! Compiled code in a sealed memfd: verified once, then immutable for every
//! process that holds it.
//!
//! A verified compile-cache entry is copied into an anonymous memory file
//! whose write, shrink and grow seals are set before anyone maps it, so the
//! kernel, not a check, guarantees that the bytes wasmtime maps are the bytes
//! whose tag verified. The host hands the file to each `sluice worker` child
//! (the process executor), which maps it without copying and without
//! verifying 30 MB again: a Python task's cached load in a worker is a map,
//! not a read, a hash and a copy.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::fs::{MemfdFlags, SealFlags};
use wasmtime::component::Component;

/// The seals that make a memfd's contents immutable.
const IMMUTABLE: SealFlags = SealFlags::WRITE
    .union(SealFlags::SHRINK)
    .union(SealFlags::GROW);

/// A memfd being filled with serialized code; [`Unsealed::seal`] freezes it.
pub(crate) struct Unsealed(File);

impl Unsealed {
    /// An empty memfd named after component `digest` (the name shows in
    /// `/proc/<pid>/fd` and `maps` only).
    pub(crate) fn new(digest: &str) -> std::io::Result<Self> {
        let name = format!("sluice-code-{digest}");
        let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
        // Ask for an executable memfd explicitly where the kernel knows the
        // flag (6.3+, where `vm.memfd_noexec` may make memfds non-executable
        // by default); older kernels reject the flag and make every memfd
        // executable.
        let fd = match rustix::fs::memfd_create(&name, flags | MemfdFlags::EXEC) {
            Err(rustix::io::Errno::INVAL) => rustix::fs::memfd_create(&name, flags)?,
            created => created?,
        };
        Ok(Self(File::from(fd)))
    }

    /// Appends `bytes`.
    pub(crate) fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.0.write_all(bytes)
    }

    /// Seals the contents: no process can change them from now on.
    pub(crate) fn seal(self) -> std::io::Result<SealedCode> {
        rustix::fs::fcntl_add_seals(&self.0, IMMUTABLE | SealFlags::SEAL)?;
        Ok(SealedCode(OwnedFd::from(self.0)))
    }
}

/// Serialized machine code of one component in a sealed memfd.
#[derive(Debug)]
pub struct SealedCode(OwnedFd);

impl SealedCode {
    /// Takes `fd` (handed over by the parent process) if it is a memfd whose
    /// contents are sealed, else says what it is not.
    pub(crate) fn adopt(fd: OwnedFd) -> std::io::Result<Self> {
        let seals = rustix::fs::fcntl_get_seals(&fd).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("fd {} is not a sealable memfd: {e}", fd.as_raw_fd()),
            )
        })?;
        if !seals.contains(IMMUTABLE) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "fd {} is a memfd whose contents are not sealed (seals {seals:?})",
                    fd.as_raw_fd()
                ),
            ));
        }
        Ok(Self(fd))
    }

    /// Another handle on the same sealed bytes.
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Self(self.0.try_clone()?))
    }

    /// The memfd, to hand to a child process.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    /// The component whose serialized code this is, mapped (not copied).
    ///
    /// # Safety
    /// The contents must be what `Component::serialize` produced with an
    /// engine compatible with `engine`: verified under the cache key by this
    /// process, or by the parent that sealed them and handed them over.
    pub(crate) unsafe fn deserialize(
        &self,
        engine: &wasmtime::Engine,
    ) -> wasmtime::Result<Component> {
        // wasmtime maps files by path; this one is reached through our own
        // descriptor (Landlock does not govern memfds, see SECURITY.md).
        let path = format!("/proc/self/fd/{}", self.0.as_raw_fd());
        // SAFETY: as the caller promises; the seals keep the mapped bytes
        // identical to the verified ones for as long as they are mapped.
        unsafe { Component::deserialize_file(engine, path) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_sealed_memfd_is_adopted_and_its_bytes_cannot_change() {
        let mut code = Unsealed::new("test").expect("memfd");
        code.write_all(b"machine code").expect("write");
        let sealed = code.seal().expect("seal");
        let mut other = Unsealed::new("other").expect("memfd");
        other.write_all(b"machine code").expect("write");
        let unsealed = OwnedFd::from(other.0);

        let refused = SealedCode::adopt(unsealed).expect_err("unsealed memfd adopted");
        assert!(refused.to_string().contains("not sealed"), "{refused}");
        let file = tempfile::tempfile().expect("file");
        let refused = SealedCode::adopt(OwnedFd::from(file)).expect_err("regular file adopted");
        assert!(
            refused.to_string().contains("not a sealable memfd"),
            "{refused}"
        );

        let fd = sealed.fd().try_clone_to_owned().expect("dup");
        let adopted = SealedCode::adopt(fd).expect("sealed memfd refused");
        let mut file = File::from(adopted.fd().try_clone_to_owned().expect("dup"));
        assert!(
            file.write_all(b"other code").is_err(),
            "a sealed memfd took a write"
        );
        assert!(file.set_len(0).is_err(), "a sealed memfd was truncated");
        let mut bytes = vec![0; 32];
        let n = std::os::unix::fs::FileExt::read_at(&File::from(adopted.0), &mut bytes, 0)
            .expect("read");
        bytes.truncate(n);
        assert_eq!(bytes, b"machine code");
    }
}
