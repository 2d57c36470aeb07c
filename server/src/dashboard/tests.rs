//! The asset router: index, content types, caching, 404 and traversal.

use http_body_util::BodyExt as _;
use tower::{Layer as _, ServiceExt as _};

use super::*;

/// The router in front of a stand-in for the gateway's routes (418).
async fn get(path: &str, headers: &[(&str, &str)], method: Method) -> Response<Body> {
    let inner = tower::service_fn(|_: Request<Body>| async {
        Ok::<_, std::convert::Infallible>(
            Response::builder()
                .status(StatusCode::IM_A_TEAPOT)
                .body(Body::empty())
                .unwrap(),
        )
    });
    let mut request = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    DashboardLayer
        .layer(inner)
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap()
}

async fn body(response: Response<Body>) -> Vec<u8> {
    response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec()
}

fn header(response: &Response<Body>, name: header::HeaderName) -> &str {
    response.headers()[name].to_str().unwrap()
}

#[tokio::test]
async fn the_root_is_index_html_revalidated_with_a_strong_etag() {
    let response = get("/dashboard/", &[], Method::GET).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, header::CONTENT_TYPE),
        "text/html; charset=utf-8"
    );
    assert_eq!(header(&response, header::CACHE_CONTROL), "no-cache");
    let etag = header(&response, header::ETAG).to_owned();
    assert!(etag.starts_with('"') && !etag.starts_with("W/"), "{etag}");
    let html = String::from_utf8(body(response).await).unwrap();
    assert!(html.contains("/dashboard/assets/"), "{html}");

    let again = get("/dashboard/", &[("if-none-match", &etag)], Method::GET).await;
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert!(body(again).await.is_empty());
    let index = get("/dashboard/index.html", &[], Method::HEAD).await;
    assert_eq!(index.status(), StatusCode::OK);
    assert_eq!(header(&index, header::ETAG), etag);
    assert!(body(index).await.is_empty(), "HEAD has no body");
}

#[tokio::test]
async fn assets_have_their_content_types_and_are_immutable() {
    for ext in ["js", "css"] {
        let asset = ASSETS
            .iter()
            .find(|a| a.path.starts_with("assets/") && a.path.ends_with(ext))
            .expect("the committed bundle has a script and a style sheet");
        let response = get(&format!("/dashboard/{}", asset.path), &[], Method::GET).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            header(&response, header::CONTENT_TYPE),
            content_type(asset.path)
        );
        assert!(header(&response, header::CACHE_CONTROL).contains("immutable"));
        assert_eq!(body(response).await, asset.bytes);
    }
    assert_eq!(content_type("a.js"), "text/javascript; charset=utf-8");
    assert_eq!(content_type("a.css"), "text/css; charset=utf-8");
    assert_eq!(content_type("a.svg"), "image/svg+xml");
    assert_eq!(content_type("noext"), "application/octet-stream");
}

#[tokio::test]
async fn unknown_paths_and_traversal_are_not_found() {
    for path in [
        "/dashboard/nope.js",
        "/dashboard/../Cargo.toml",
        "/dashboard/assets/../index.html",
        "/dashboard/%2e%2e/Cargo.toml",
        "/dashboard//index.html",
        "/dashboard/assets/",
    ] {
        let response = get(path, &[], Method::GET).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let response = get("/dashboard/", &[], Method::POST).await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn the_bare_path_redirects_and_other_paths_pass_through() {
    let response = get("/dashboard", &[], Method::GET).await;
    assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(header(&response, header::LOCATION), "/dashboard/");
    for path in ["/asyncgate.v1.Admin/ListQueues", "/dashboardx", "/"] {
        let response = get(path, &[], Method::POST).await;
        assert_eq!(response.status(), StatusCode::IM_A_TEAPOT, "{path}");
    }
}
