//! Wire compatibility with the tutorial's Go programs: golden bytes as Go's `proto.Marshal`
//! writes them for the tutorial's schema (fields in number order, proto3 zero values left
//! out), decoded by shoal and encoded back byte for byte.

use prost::Message;
use shoal_nats::{DiscoverableServiceTransport, Task, TextMessage, Time, User};

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(golden: &[u8], expected: &M) {
    let decoded = M::decode(golden).expect("golden bytes decode");
    assert_eq!(&decoded, expected);
    assert_eq!(
        expected.encode_to_vec(),
        golden,
        "encodes to the same bytes"
    );
}

#[test]
fn user_matches_the_tutorial_schema() {
    // User{id: "3", name: "Dan"}: field 1 and 2, length-delimited.
    let golden = [0x0a, 0x01, b'3', 0x12, 0x03, b'D', b'a', b'n'];
    round_trip(
        &golden,
        &User {
            id: "3".into(),
            name: "Dan".into(),
        },
    );
    // A request carries only the id.
    round_trip(
        &[0x0a, 0x01, b'4'],
        &User {
            id: "4".into(),
            name: String::new(),
        },
    );
}

#[test]
fn time_and_discovery_match() {
    let mut golden = vec![0x0a, 20];
    golden.extend_from_slice(b"2026-11-23T03:40:00Z");
    round_trip(
        &golden,
        &Time {
            time: "2026-11-23T03:40:00Z".into(),
        },
    );
    let mut golden = vec![0x0a, 21];
    golden.extend_from_slice(b"http://127.0.0.1:3006");
    round_trip(
        &golden,
        &DiscoverableServiceTransport {
            address: "http://127.0.0.1:3006".into(),
        },
    );
}

#[test]
fn task_matches_including_negative_and_zero_fields() {
    // Task{uuid: "a1", finisheduuid: "b2", state: 2, id: 19}
    let golden = [
        0x0a, 0x02, b'a', b'1', 0x12, 0x02, b'b', b'2', 0x18, 0x02, 0x20, 0x13,
    ];
    round_trip(
        &golden,
        &Task {
            uuid: "a1".into(),
            finisheduuid: "b2".into(),
            state: 2,
            id: 19,
        },
    );
    // Task 0, not started: id and state are zero and not written at all, as Go does.
    round_trip(
        &[0x0a, 0x01, b'u'],
        &Task {
            uuid: "u".into(),
            ..Task::default()
        },
    );
    // The empty task ("no work") is zero bytes.
    round_trip(&[], &Task::default());
    // A negative int32 is a ten-byte varint in Go; the same here.
    round_trip(
        &[
            0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ],
        &Task {
            state: -1,
            ..Task::default()
        },
    );
}

#[test]
fn text_message_matches() {
    let mut golden = vec![0x08, 14, 0x12, 8];
    golden.extend_from_slice(b"Hello 14");
    round_trip(
        &golden,
        &TextMessage {
            id: 14,
            body: "Hello 14".into(),
        },
    );
}

#[test]
fn unknown_fields_are_skipped_and_garbage_is_an_error() {
    // A newer sender's extra field 3 (varint 5) is skipped.
    let newer = [0x0a, 0x01, b'1', 0x12, 0x03, b'B', b'o', b'b', 0x18, 0x05];
    let user = User::decode(&newer[..]).expect("decodes");
    assert_eq!(user.name, "Bob");
    // Truncated or malformed input is an error, never a panic.
    for garbage in [
        &[0x0a, 0x05, b'x'][..],
        &[0xff][..],
        &[0x12, 0x02, 0xff, 0xfe][..],
    ] {
        assert!(User::decode(garbage).is_err(), "{garbage:?}");
    }
}
