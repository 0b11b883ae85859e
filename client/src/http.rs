//! A minimal HTTP/1.1 call over one connection: enough for the admin API, the CLI and tests,
//! without a full HTTP client stack in the build.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::ClientError;

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The `host:port` of a base URL such as `http://127.0.0.1:8080`.
pub fn authority(base: &str) -> Result<String, ClientError> {
    let uri: hyper::Uri = base
        .parse()
        .map_err(|_| ClientError::InvalidAddress(base.into()))?;
    let authority = uri
        .authority()
        .ok_or_else(|| ClientError::InvalidAddress(base.into()))?;
    Ok(authority.to_string())
}

/// Where a URL points: whether it speaks TLS, and the host (without brackets) and port to
/// connect to, the scheme's default port when it names none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// The endpoint of `uri`, whose scheme is `plain` (`http`, `ws`; also when it has none) or
    /// `secure` (`https`, `wss`); `url` is shown in errors.
    pub fn of(uri: &hyper::Uri, plain: &str, secure: &str, url: &str) -> Result<Self, ClientError> {
        let tls = match uri.scheme_str() {
            Some(scheme) if scheme == secure => true,
            Some(scheme) if scheme == plain => false,
            None => false,
            Some(_) => {
                return Err(ClientError::InvalidAddress(format!(
                    "{url}: expected {plain}:// or {secure}://"
                )));
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| ClientError::InvalidAddress(url.to_owned()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Self { tls, host, port })
    }
}

/// [`call`], given up after `timeout` (connecting, sending and reading the whole answer):
/// `ClientError::Timeout` then.
pub async fn call_within(
    timeout: std::time::Duration,
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Result<HttpResponse, ClientError> {
    tokio::time::timeout(timeout, call(base, method, path, headers, body))
        .await
        .map_err(|_| ClientError::Timeout)?
}

/// Sends one request to `base` (`http://host:port`) and reads the whole answer.
pub async fn call(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Result<HttpResponse, ClientError> {
    let uri: hyper::Uri = base
        .parse()
        .map_err(|_| ClientError::InvalidAddress(base.into()))?;
    let authority = uri
        .authority()
        .ok_or_else(|| ClientError::InvalidAddress(base.into()))?
        .to_string();
    // `Host` is the authority as given; the connection goes to the scheme's default port when
    // it names none.
    let endpoint = Endpoint::of(&uri, "http", "https", base)?;
    let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await?;
    let stream = crate::tls::open(tcp, endpoint.tls, &endpoint.host).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let driver = tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", &authority)
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?
        .to_bytes();
    driver.abort();
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(url: &str, plain: &str, secure: &str) -> Result<Endpoint, ClientError> {
        Endpoint::of(&url.parse().expect("a URI"), plain, secure, url)
    }

    #[test]
    fn an_endpoint_without_a_port_gets_its_schemes_default() {
        let of = |url| endpoint(url, "http", "https").expect("an endpoint");
        assert_eq!(of("https://ringside.example.com").port, 443);
        assert_eq!(of("http://ringside.example.com").port, 80);
        let secure = of("https://[::1]:8443");
        assert_eq!(
            (secure.tls, secure.host.as_str(), secure.port),
            (true, "::1", 8443)
        );
        assert!(!of("127.0.0.1:8080").tls);
        let ws = endpoint("wss://node.example.com/v1/ws", "ws", "wss").expect("an endpoint");
        assert_eq!((ws.tls, ws.port), (true, 443));
        assert!(endpoint("ftp://x", "http", "https").is_err());
    }
}
