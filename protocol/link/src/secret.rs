//! Comparing a secret someone sent with the one expected, in constant time: both are
//! hashed (SHA-256) and the digests compared byte by byte without an early exit, so
//! neither the time taken nor the lengths tell an attacker how close a guess was. The
//! merger checks edge secrets and the operator token with it, the agent its admin token.

use sha2::{Digest, Sha256};

/// Whether `given` is `want`, compared in constant time.
pub fn same(given: &str, want: &str) -> bool {
    let (a, b) = (Sha256::digest(given.as_bytes()), Sha256::digest(want.as_bytes()));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn equal_secrets_match_and_others_do_not() {
        assert!(super::same("s3cret-123", "s3cret-123"));
        assert!(!super::same("s3cret-124", "s3cret-123"));
        assert!(!super::same("", "s3cret-123"));
        assert!(!super::same("s3cret-123 ", "s3cret-123"));
    }
}
