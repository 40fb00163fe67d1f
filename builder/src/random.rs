//! Random bytes from the operating system (getrandom(2)), with the failure reported: a token,
//! build ref or key seed is never made from bytes that were not filled.

/// Fills `buf` with random bytes.
pub fn fill(buf: &mut [u8]) -> anyhow::Result<()> {
    getrandom::getrandom(buf)
        .map_err(|e| anyhow::anyhow!("the operating system gave no random bytes: {e}"))
}

/// `n` random bytes as lowercase hex (2n characters).
pub fn hex(n: usize) -> anyhow::Result<String> {
    let mut bytes = vec![0u8; n];
    fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_is_random_and_sized() {
        let a = super::hex(12).unwrap();
        assert_eq!(a.len(), 24);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, super::hex(12).unwrap());
    }
}
