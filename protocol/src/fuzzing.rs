//! What every fuzz harness of the workspace shares (feature `fuzzing`, for
//! the other crates' tests; always in this crate's own): the case budget
//! and hostile byte streams of length-prefixed frames.

use proptest::prelude::*;
use serde_json::Value;

use crate::frame::MAX_FRAME_LEN;

/// Cases per property: 256, or `HUSK_FUZZ_CASES` to run longer.
pub fn config() -> ProptestConfig {
    let cases = std::env::var("HUSK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// One piece of a hostile stream.
#[derive(Debug, Clone)]
pub enum Piece {
    /// A frame with the right length prefix.
    Frame(Vec<u8>),
    /// A length prefix that lies (short, long, beyond the limit).
    Prefix(u32),
    /// Raw bytes.
    Raw(Vec<u8>),
}

/// Mostly frames with bodies from `body`, some lying prefixes and some
/// raw bytes (up to `raw_max` of them).
pub fn piece(
    body: impl Strategy<Value = Vec<u8>> + 'static,
    raw_max: usize,
) -> impl Strategy<Value = Piece> {
    prop_oneof![
        7 => body.prop_map(Piece::Frame),
        1 => prop_oneof![
            0u32..64,
            Just(MAX_FRAME_LEN),
            Just(MAX_FRAME_LEN + 1),
            Just(u32::MAX)
        ]
        .prop_map(Piece::Prefix),
        1 => prop::collection::vec(any::<u8>(), 0..raw_max).prop_map(Piece::Raw),
    ]
}

/// Up to `max_pieces - 1` pieces as the bytes on the wire.
pub fn stream(
    piece: impl Strategy<Value = Piece> + 'static,
    max_pieces: usize,
) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(piece, 0..max_pieces).prop_map(|pieces| {
        let mut out = Vec::new();
        for p in pieces {
            match p {
                Piece::Frame(body) => {
                    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
                    out.extend_from_slice(&body);
                }
                Piece::Prefix(n) => out.extend_from_slice(&n.to_be_bytes()),
                Piece::Raw(b) => out.extend_from_slice(&b),
            }
        }
        out
    })
}

/// JSON up to three levels deep: `leaf` values, arrays, and objects whose
/// keys come from the strategy `key` makes.
pub fn json_tree<L, K>(leaf: L, key: fn() -> K) -> impl Strategy<Value = Value>
where
    L: Strategy<Value = Value> + 'static,
    K: Strategy<Value = String> + 'static,
{
    leaf.prop_recursive(3, 12, 4, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(key(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
