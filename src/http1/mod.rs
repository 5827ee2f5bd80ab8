//! HTTP/1.1: zero-copy head parsing, body framing, head encoding.
