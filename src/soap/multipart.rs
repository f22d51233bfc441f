//! The SOAP envelope inside a `multipart/related` request (SwA, MTOM/XOP).

/// The SOAP envelope's bytes inside a `multipart/related` message (SwA,
/// MTOM/XOP): the part whose `Content-ID` is the `start` parameter, or the
/// first part. Only as much of it as `message` holds (the message may be
/// the first bytes of a stream). `None` when it cannot be found.
pub fn multipart_root<'a>(message: &'a [u8], content_type: &str) -> Option<&'a [u8]> {
    let mime: mime::Mime = content_type.parse().ok()?;
    let boundary = format!("--{}", mime.get_param("boundary")?.as_str());
    let start = mime.get_param("start").map(|s| s.as_str().to_owned());
    let finder = memchr::memmem::Finder::new(boundary.as_bytes());
    let mut at = finder.find(message)? + boundary.len();
    loop {
        // Part headers run from after the boundary line to an empty line.
        let headers_end = at + memchr::memmem::find(&message[at..], b"\r\n\r\n")?;
        let headers = String::from_utf8_lossy(&message[at..headers_end]);
        let content = headers_end + 4;
        let end = finder
            .find(&message[content..])
            .map_or(message.len(), |i| (content + i).saturating_sub(2));
        let is_root = match &start {
            None => true,
            Some(id) => headers.lines().any(|line| {
                line.split_once(':').is_some_and(|(name, value)| {
                    name.trim().eq_ignore_ascii_case("content-id") && value.trim() == id.trim()
                })
            }),
        };
        if is_root {
            return message.get(content..end.max(content));
        }
        at = content + finder.find(&message[content..])? + boundary.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_part_of_a_multipart_message_is_found() {
        let message = b"--b1\r\nContent-ID: <att>\r\n\r\nBINARY\r\n--b1\r\nContent-Type: application/xop+xml\r\nContent-ID: <root@x>\r\n\r\n<root/>\r\n--b1--\r\n";
        let ct = "multipart/related; type=\"application/xop+xml\"; start=\"<root@x>\"; boundary=b1";
        assert_eq!(multipart_root(message, ct), Some(&b"<root/>"[..]));
        // Without start, the first part is the root.
        assert_eq!(
            multipart_root(message, "multipart/related; boundary=b1"),
            Some(&b"BINARY"[..])
        );
        assert_eq!(multipart_root(message, "multipart/related"), None);
        assert_eq!(
            multipart_root(b"no boundary here", "multipart/related; boundary=b1"),
            None
        );
    }
}
