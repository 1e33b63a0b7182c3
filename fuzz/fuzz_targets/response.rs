//! An upstream's answer through the proxy engine's HTTP/1.1 client (head, framing, body):
//! `tenement_proxy::fuzzing::response` says what must hold.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tenement_proxy::fuzzing::response(data));
