//! The committed vectors: up to date with the generator and PROTOCOL.md, and conforming to the
//! reference implementation (the protocol crate's decoder, encoder and connection).
//!
//! Regenerate after a specification change with `cargo run -p conformance -- gen-vectors` and review
//! the diff: that command is the only writer. A test run never rewrites the files; it fails on drift.

use conformance::vectors::{self, Loaded, check};

fn loaded() -> Loaded {
    vectors::load(&vectors::workspace_vectors_dir()).expect("vector files load")
}

#[test]
fn vector_files_are_up_to_date_with_the_specification() {
    let generated = vectors::generate_from_file(&vectors::workspace_spec_path())
        .expect("PROTOCOL.md yields vectors");
    let dir = vectors::workspace_vectors_dir();
    let stale = vectors::stale_files(&dir, &generated).expect("compare");
    assert!(
        stale.is_empty(),
        "vector files differ from what PROTOCOL.md generates now: {stale:?}; \
         run `cargo run -p conformance -- gen-vectors` and review the diff"
    );
    assert!(generated.len() >= 40, "only {} vectors", generated.len());
}

#[test]
fn every_vector_conforms_to_the_reference_implementation() {
    let l = loaded();
    let failures: Vec<String> = l
        .check()
        .into_iter()
        .filter_map(|(name, r)| r.err().map(|e| format!("{name}: {e}")))
        .collect();
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn coverage_every_frame_type_flag_and_outcome() {
    let l = loaded();
    let frames: Vec<_> = l
        .frames
        .vectors
        .iter()
        .chain(&l.handshake.vectors)
        .flat_map(|v| &v.frames)
        .collect();
    for t in [
        "DATA",
        "REQUEST",
        "RESPONSE",
        "TRAILER",
        "RESET",
        "WINDOW_UPDATE",
        "PING",
        "GOAWAY",
        "HELLO",
        "ACCEPT",
        "REJECT",
        "UNKNOWN",
    ] {
        assert!(frames.iter().any(|f| f.type_name == t), "no vector for {t}");
    }
    for (t, flag) in [
        ("DATA", "END_STREAM"),
        ("REQUEST", "END_STREAM"),
        ("RESPONSE", "END_STREAM"),
        ("PING", "ACK"),
    ] {
        assert!(
            frames
                .iter()
                .any(|f| f.type_name == t && f.flag_names.iter().any(|n| n == flag)),
            "no vector for {t} with {flag}"
        );
    }
    use conformance::vectors::model::Outcome::*;
    for outcome in [
        ConnectionError,
        StreamError,
        Reject,
        Ignored,
        ClosedSilently,
        Reply,
    ] {
        assert!(
            l.malformed
                .vectors
                .iter()
                .any(|v| v.expect.outcome == outcome),
            "no malformed vector with outcome {outcome:?}"
        );
    }
}

/// The checks can fail: a corrupted vector of each kind is caught.
#[test]
fn corrupted_vectors_are_refused() {
    let l = loaded();
    let mut frame = l.frames.vectors[0].clone();
    frame.frames[0].stream += 2;
    assert!(check::check_frame_vector(&frame).is_err());
    let mut frame = l.frames.vectors[0].clone();
    frame.hex.push_str("00");
    assert!(check::check_frame_vector(&frame).is_err());

    let find = |name: &str| {
        l.malformed
            .vectors
            .iter()
            .find(|v| v.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("vector {name}"))
    };
    let mut v = find("data-on-stream-0");
    v.expect.code = Some(3);
    assert!(check::check_malformed_vector(&v).is_err());
    let mut v = find("request-beyond-max-concurrent-streams");
    v.receiver_settings.max_concurrent_streams = 2;
    assert!(
        check::check_malformed_vector(&v).is_err(),
        "stream 3 fits a limit of 2"
    );
    let mut v = find("unsolicited-ping-ack-ignored");
    v.expect.outcome = conformance::vectors::model::Outcome::ClosedSilently;
    assert!(check::check_malformed_vector(&v).is_err());
    let mut v = find("hello-no-common-version");
    v.expect.reject_value = Some(1);
    assert!(check::check_malformed_vector(&v).is_err());
    let mut v = find("window-update-increment-0");
    v.expect.codec_error = Some("StreamZero".into());
    assert!(check::check_malformed_vector(&v).is_err());
}

/// Drift is detected: a vector file that differs from what the generator makes is reported stale,
/// and comparing never writes (the committed files are untouched by the check).
#[test]
fn drift_is_reported_and_never_repaired() {
    let generated = vectors::generate_from_file(&vectors::workspace_spec_path())
        .expect("PROTOCOL.md yields vectors");
    let dir = tempfile::tempdir().expect("temp dir");
    vectors::write(dir.path(), &generated).expect("write a copy");
    assert!(
        vectors::stale_files(dir.path(), &generated)
            .expect("compare")
            .is_empty()
    );
    let file = std::fs::read_dir(dir.path())
        .expect("list")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .expect("a vector file");
    let text = std::fs::read_to_string(&file).expect("read");
    let drifted = text.replacen("\"", "\" ", 1);
    std::fs::write(&file, &drifted).expect("write drift");
    let stale = vectors::stale_files(dir.path(), &generated).expect("compare");
    assert!(
        !stale.is_empty(),
        "a drifted {} went unnoticed",
        file.display()
    );
    assert_eq!(
        std::fs::read_to_string(&file).expect("read again"),
        drifted,
        "the check must not rewrite the file"
    );
}
