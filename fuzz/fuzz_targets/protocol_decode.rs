//! Arbitrary bytes through every decoder of the RPC protocol: request frames
//! (the server's view), every response decoder, and the raw tensor parser.
//! Nothing may panic, and whatever decodes must re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardline_protocol::{
    decode_alloc_buffer_response, decode_buffer_get_base_response, decode_copy_tensor_response,
    decode_device_count_response, decode_get_alignment_response, decode_get_alloc_size_response,
    decode_get_device_memory_response, decode_get_max_size_response, decode_get_tensor_response,
    decode_hello_response, decode_request_frame, decode_response_frame,
    decode_set_tensor_hash_response, Command, ExpectedResponse, RpcTensor,
};

fuzz_target!(|data: &[u8]| {
    // Request frames back to back, as a server reads them.
    let mut rest = data;
    while let Ok(Some((req, used))) = decode_request_frame(rest) {
        let mut again = Vec::new();
        req.encode(&mut again)
            .expect("a decoded request re-encodes");
        assert_eq!(
            Some(&again[..]),
            rest.get(..used),
            "re-encoding differs for {}",
            req.command()
        );
        assert_eq!(req.command().as_u8(), rest[0]);
        rest = rest.get(used..).unwrap_or(&[]);
    }

    // Every response decoder on the raw bytes.
    let _ = decode_alloc_buffer_response(data);
    let _ = decode_get_alignment_response(data);
    let _ = decode_get_max_size_response(data);
    let _ = decode_buffer_get_base_response(data);
    let _ = decode_set_tensor_hash_response(data);
    let _ = decode_copy_tensor_response(data);
    let _ = decode_get_device_memory_response(data);
    let _ = decode_get_alloc_size_response(data);
    let _ = decode_hello_response(data);
    let _ = decode_device_count_response(data);
    let _ = decode_get_tensor_response(data, data.len() as u64);

    // Response frames: the first byte picks the command the client waits for.
    if let Some((&sel, frame)) = data.split_first() {
        let expected = match Command::try_from(sel % 18) {
            Ok(Command::GetTensor) => Some(ExpectedResponse::get_tensor(u64::from(sel))),
            Ok(cmd) => ExpectedResponse::fixed(cmd),
            Err(_) => None,
        };
        if let Some(exp) = expected {
            if let Ok(Some((resp, used))) = decode_response_frame(exp, frame) {
                let mut again = Vec::new();
                resp.encode(&mut again);
                assert_eq!(resp.command(), exp.cmd);
                // HELLO's padding byte is not kept; compare everything else.
                if exp.cmd != Command::Hello {
                    assert_eq!(Some(&again[..]), frame.get(..used));
                }
            }
        }
    }

    // The raw tensor parser accepts every 296-byte pattern and round-trips it.
    if let Some(t) = data
        .get(..RpcTensor::WIRE_SIZE)
        .and_then(RpcTensor::from_slice)
    {
        assert_eq!(&t.to_bytes()[..], &data[..RpcTensor::WIRE_SIZE]);
        let _ = t.name();
    }
});
