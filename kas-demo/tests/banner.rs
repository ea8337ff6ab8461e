//! `kas-demo` prints where the demo user's token is, never the token (moved from kas's hostile_config
//! tests with the demo).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

#[test]
fn the_demo_banner_names_the_token_file_not_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = kas_demo::DemoOptions::new(1, dir.path().join("state"));
    opts.agent_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    opts.api_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    opts.churn = 0.0;
    let demo = kas_demo::Demo::start(&opts).unwrap();
    let banner = demo.banner();
    let file = demo.user_token_file().to_owned();
    let token = std::fs::read_to_string(&file).unwrap();
    let token = token.trim();
    assert!(token.len() >= 16);
    for piece in token.as_bytes().windows(8) {
        let piece = std::str::from_utf8(piece).unwrap();
        assert!(
            !banner.contains(piece),
            "the banner shows the token:\n{banner}"
        );
    }
    assert!(
        banner.contains(&format!("$(cat {})", file.display())),
        "{banner}"
    );
    demo.shutdown();
}
