//! A client's request head through the proxy engine's fast path (parse, plan, the head it
//! writes for the upstream): `tenement_proxy::fuzzing::request` says what must hold.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tenement_proxy::fuzzing::request(data));
