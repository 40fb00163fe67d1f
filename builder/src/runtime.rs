//! Finding the in-container runtime (`envd-init`, `envd-sshd`) that the builder puts into
//! images, and checking that it is statically linked so it runs in any Linux image.

use std::path::{Path, PathBuf};

/// The runtime binaries every dev image gets.
pub const RUNTIME_BINARIES: [&str; 2] = ["envd-init", "envd-sshd"];

/// Where the runtime was looked for, and why it was not found.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// None of the candidate directories has the binary.
    #[error("cannot find {binary}: looked in {}; build it with scripts/build-runtime or set ENVD_RUNTIME_DIR", searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NotFound {
        /// The binary.
        binary: String,
        /// The directories searched.
        searched: Vec<PathBuf>,
    },
    /// The binary is dynamically linked and would not run in every image.
    #[error("{0} is dynamically linked (it has an ELF interpreter); build it with scripts/build-runtime")]
    NotStatic(PathBuf),
    /// The file is not a 64-bit little-endian ELF executable.
    #[error("{0} is not an x86_64 ELF executable")]
    NotElf(PathBuf),
    /// Reading the file failed.
    #[error("cannot read {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// Where a pip install (`scripts/build-wheel`) puts the runtime, relative to the prefix whose
/// `bin/` holds `envd`.
pub const WHEEL_RUNTIME_DIR: &str = "share/envd-rs/runtime";

/// Directories searched for the runtime, in order: `$ENVD_RUNTIME_DIR`, the directory of the
/// running `envd`, `share/envd-rs/runtime` beside its `bin/` (a pip install), and
/// `target/runtime` above it (for a checkout).
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("ENVD_RUNTIME_DIR") {
        dirs.push(PathBuf::from(d));
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            dirs.push(dir.to_path_buf());
            if let Some(parent) = dir.parent() {
                // VENV/bin/envd → VENV/share/envd-rs/runtime
                dirs.push(parent.join(WHEEL_RUNTIME_DIR));
                // target/{debug,release}/envd → target/runtime
                dirs.push(parent.join("runtime"));
            }
        }
    }
    dirs
}

/// Finds one runtime binary and checks that it is static.
pub fn locate(binary: &str) -> Result<PathBuf, RuntimeError> {
    let dirs = search_dirs();
    for d in &dirs {
        let candidate = d.join(binary);
        if candidate.is_file() {
            check_static(&candidate)?;
            return Ok(candidate);
        }
    }
    Err(RuntimeError::NotFound {
        binary: binary.to_string(),
        searched: dirs,
    })
}

/// Checks that `path` is an x86_64 ELF executable without an interpreter (statically linked).
pub fn check_static(path: &Path) -> Result<(), RuntimeError> {
    use std::io::Read;
    let io_error = |e| RuntimeError::Io(path.to_path_buf(), e);
    // The program headers sit at the start of the file: read 64 KiB, not the whole binary
    // (every `envd build` and `envd debug llb` checks both binaries).
    let mut bytes = Vec::new();
    let file = std::fs::File::open(path).map_err(io_error)?;
    file.take(64 * 1024)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    match elf_has_interpreter(&bytes) {
        Some(false) => Ok(()),
        Some(true) => Err(RuntimeError::NotStatic(path.to_path_buf())),
        None => Err(RuntimeError::NotElf(path.to_path_buf())),
    }
}

/// `Some(true)` when the ELF image has a `PT_INTERP` program header, `Some(false)` when it has
/// none, `None` when it is not a 64-bit little-endian x86_64 ELF file.
pub fn elf_has_interpreter(bytes: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    const EM_X86_64: u16 = 62;
    let u16_at = |o: usize| Some(u16::from_le_bytes(bytes.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(bytes.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(bytes.get(o..o + 8)?.try_into().ok()?));
    if bytes.get(0..4)? != b"\x7fELF" || bytes.get(4)? != &2 || bytes.get(5)? != &1 {
        return None;
    }
    if u16_at(0x12)? != EM_X86_64 {
        return None;
    }
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    for i in 0..phnum {
        if u32_at(phoff + i * phentsize)? == PT_INTERP {
            return Some(true);
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_system_binary_has_an_interpreter() {
        // /bin/sh on Debian is dynamically linked.
        let bytes = std::fs::read("/bin/sh").unwrap();
        assert_eq!(elf_has_interpreter(&bytes), Some(true));
    }

    #[test]
    fn non_elf_is_rejected() {
        assert_eq!(elf_has_interpreter(b"#!/bin/sh\necho hi\n"), None);
        assert_eq!(elf_has_interpreter(b""), None);
    }

    #[test]
    fn env_dir_is_searched_first() {
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var("ENVD_RUNTIME_DIR", dir.path());
        assert_eq!(search_dirs()[0], dir.path());
        let err = locate("envd-init-surely-missing").unwrap_err();
        assert!(err.to_string().contains("ENVD_RUNTIME_DIR"));
        std::fs::write(dir.path().join("fake"), b"not elf").unwrap();
        assert!(matches!(locate("fake"), Err(RuntimeError::NotElf(_))));
        std::env::remove_var("ENVD_RUNTIME_DIR");
    }
}
