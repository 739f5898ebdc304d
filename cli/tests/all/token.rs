//! `tally token` mints tokens the collector accepts, and refuses bad input with a message.

use std::process::Command;

fn tally(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .env_remove("TALLY_TOKEN_KEY")
        .output()
        .expect("runs")
}

#[test]
fn minted_token_verifies_with_the_same_key() {
    let key = "an-edge-shared-key-123";
    let out = tally(&[
        "token",
        "--video",
        "v42",
        "--channel",
        "c7",
        "--category",
        "news",
        "--live",
        "--session",
        "sess-1",
        "--ttl",
        "1h",
        "--key",
        key,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap();
    let claims = tally_collector::token::verify(key.as_bytes(), token.trim()).expect("verifies");
    assert_eq!(
        (
            claims.video.as_str(),
            claims.channel.as_str(),
            claims.category.as_str(),
            claims.live
        ),
        ("v42", "c7", "news", true)
    );
    assert_eq!(claims.session, "sess-1");
    let now = tally_delta::now_ms() / 1000;
    assert!((now + 3590..=now + 3610).contains(&claims.expires_s));
    assert!((now - 10..=now + 10).contains(&claims.issued_s));
    assert!(tally_collector::token::verify(b"another-key-entirely", token.trim()).is_err());
}

#[test]
fn short_key_is_refused_with_a_message() {
    let out = tally(&[
        "token",
        "--video",
        "v",
        "--channel",
        "c",
        "--session",
        "s",
        "--key",
        "short",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 16 bytes"));
}
