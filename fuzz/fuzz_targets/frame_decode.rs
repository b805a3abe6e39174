//! The host transport's frame decoder, as the server runs it: split request
//! frames off a receive buffer until it runs dry or a header is refused,
//! and decode response headers as a client does. A decoded header encodes
//! back to exactly the bytes it came from, and a frame never claims more
//! bytes than the buffer holds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pddgpu_ipc::frame::{
    split_request, Incoming, ResponseHeader, MAX_PAYLOAD, REQUEST_HEADER_LEN, RESPONSE_HEADER_LEN,
};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    loop {
        match split_request(rest) {
            Ok(Incoming::Request { header, len }) => {
                assert!(len >= REQUEST_HEADER_LEN && len <= rest.len());
                assert!(header.payload_len as usize <= MAX_PAYLOAD);
                assert!(header.out_len as usize <= MAX_PAYLOAD);
                assert_eq!(header.sqe.caller, 0, "the caller never comes from the wire");
                assert_eq!(&header.encode()[..], &rest[..REQUEST_HEADER_LEN]);
                rest = &rest[len..];
            }
            Ok(Incoming::Incomplete) => break,
            Err(e) => {
                // Every refusal maps to an errno a client can be sent.
                assert!(e.errno() > 0);
                break;
            }
        }
    }
    if let Ok(header) = ResponseHeader::decode(data) {
        assert!(header.payload_len as usize <= MAX_PAYLOAD);
        assert_eq!(&header.encode()[..], &data[..RESPONSE_HEADER_LEN]);
    }
});
