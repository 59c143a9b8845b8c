//! Property tests: no parser panics on arbitrary input, and builders round-trip.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use proptest::prelude::*;

use super::*;
use crate::net::framing::{peek_header, peek_startup_len};

proptest! {
    #[test]
    fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = peek_header(&data, 1024);
        let _ = peek_startup_len(&data, 1024);
        let _ = split_frame(&data);
        let _ = parse_startup(&data);
        let _ = ErrorFields::parse(&data);
        let _ = parse_auth(&data);
        let _ = parse_password(&data);
        let _ = password_message::parse_sasl_initial(&data);
        let _ = parse_parameter_status(&data);
        let _ = parse_backend_key_data(&data);
        let _ = parse_ready_for_query(&data);
        let _ = parse_negotiate_protocol_version(&data);
        let _ = parse_query(&data);
        let _ = parse_parse(&data);
    }

    #[test]
    fn startup_params_round_trip(
        params in proptest::collection::vec(("[a-z_]{1,12}", "[^\u{0}]{0,20}"), 0..8)
    ) {
        let refs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let f = build_startup(&refs);
        let parsed = parse_startup(&f).unwrap();
        prop_assert_eq!(parsed, StartupPacket::Startup { major: 3, minor: 0, params });
    }

    #[test]
    fn error_round_trip(msg in "[^\u{0}]{0,50}", detail in proptest::option::of("[^\u{0}]{0,50}")) {
        let f = build_error("ERROR", "42501", &msg, detail.as_deref(), None);
        let (_, body) = split_frame(&f).unwrap();
        let e = ErrorFields::parse(body).unwrap();
        prop_assert_eq!(e.message(), Some(msg.as_str()));
        prop_assert_eq!(e.get(b'D'), detail.as_deref());
        prop_assert_eq!(rebuild(b'E', &e), f);
    }

    #[test]
    fn parse_round_trip(name in "[^\u{0}]{0,10}", sql in "[^\u{0}]{0,80}", types in proptest::collection::vec(any::<u32>(), 0..10)) {
        let f = build_parse(&name, &sql, &types);
        let (_, body) = split_frame(&f).unwrap();
        let p = parse_parse(body).unwrap();
        prop_assert_eq!(p, ParseMessage { name: &name, sql: &sql, param_types: types.clone() });
    }
}
