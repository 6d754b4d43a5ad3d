//! Minimal XML text escaping for the documents the gateway writes itself.

/// Appends `text` to `out`, escaping the five XML special characters.
pub fn escape(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
}

/// Rewrites the bucket name in an S3 response document from the backend's
/// name to the one clients use: `<Name>` (listings), `<Bucket>` (multipart),
/// `<BucketName>` and `<Resource>` (errors). When `location` is given, the
/// content of `<Location>` (CompleteMultipartUpload, which names the backend
/// endpoint) is replaced by it.
///
/// Bucket names are plain `[A-Za-z0-9._-]`, so they need no escaping, and
/// these elements never hold object keys.
pub fn rename_bucket(doc: &str, from: &str, to: &str, location: Option<&str>) -> String {
    let mut out = doc.to_owned();
    if from != to {
        for tag in ["Name", "Bucket", "BucketName"] {
            out = out.replace(
                &format!("<{tag}>{from}</{tag}>"),
                &format!("<{tag}>{to}</{tag}>"),
            );
        }
        out = out
            .replace(&format!("<Resource>/{from}/"), &format!("<Resource>/{to}/"))
            .replace(&format!("<Resource>/{from}<"), &format!("<Resource>/{to}<"));
    }
    if let Some(location) = location {
        if let (Some(start), Some(end)) = (out.find("<Location>"), out.find("</Location>")) {
            if start < end {
                let mut escaped = String::with_capacity(location.len());
                escape(&mut escaped, location);
                out.replace_range(start + "<Location>".len()..end, &escaped);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_only_bucket_elements() {
        let doc = "<ListBucketResult><Name>data-prod</Name><Prefix></Prefix><Contents><Key>data-prod</Key></Contents></ListBucketResult>";
        assert_eq!(
            rename_bucket(doc, "data-prod", "data", None),
            "<ListBucketResult><Name>data</Name><Prefix></Prefix><Contents><Key>data-prod</Key></Contents></ListBucketResult>"
        );
        let err = "<Error><Code>NoSuchKey</Code><Resource>/data-prod/k</Resource><BucketName>data-prod</BucketName></Error>";
        assert_eq!(
            rename_bucket(err, "data-prod", "data", None),
            "<Error><Code>NoSuchKey</Code><Resource>/data/k</Resource><BucketName>data</BucketName></Error>"
        );
        let done = "<CompleteMultipartUploadResult><Location>http://10.0.0.5:9000/data-prod/k</Location><Bucket>data-prod</Bucket></CompleteMultipartUploadResult>";
        assert_eq!(
            rename_bucket(done, "data-prod", "data", Some("http://gw/data/k&x")),
            "<CompleteMultipartUploadResult><Location>http://gw/data/k&amp;x</Location><Bucket>data</Bucket></CompleteMultipartUploadResult>"
        );
        // a prefix of the bucket name is left alone
        assert_eq!(
            rename_bucket("<Name>data-prod2</Name>", "data-prod", "data", None),
            "<Name>data-prod2</Name>"
        );
    }
}
