//! The honey-jar marketplace over the API: listings, purchases that grant search, idempotency,
//! ratings and previews.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::{onnxruntime_available, ServerOptions, TestServer};
use crate::knowledge::{create_jar, english, settled, upload};

fn market_server() -> ServerOptions {
    ServerOptions::new()
        .env("STING_RATE_LIMITS__UPLOAD__REQUESTS", "1000")
        .env("STING_RATE_LIMITS__GENERAL__REQUESTS", "100000")
        .env("STING_RATE_LIMITS__SEARCH__REQUESTS", "100000")
}

async fn list(server: &TestServer, token: &str, jar: &str, body: Value) -> Value {
    let mut body = body;
    body["honey_jar_id"] = json!(jar);
    let reply = server
        .post("/api/marketplace/honey-pots", Some(token), body)
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    reply.body
}

fn ids(page: &Value) -> Vec<String> {
    page["listings"]
        .as_array()
        .unwrap_or_else(|| panic!("{page}"))
        .iter()
        .map(|l| l["title"].as_str().unwrap().to_owned())
        .collect()
}

fn billing() -> Value {
    json!({"name": "Bo Buyer", "email": "bo@example.com", "address": "1 Main St",
        "city": "Town", "state": "ST", "zip": "12345"})
}

async fn purchase(
    server: &TestServer,
    token: &str,
    listing: &str,
    key: &str,
) -> (StatusCode, Value) {
    let request = server
        .client
        .post(server.url(&format!("/api/marketplace/honey-pots/{listing}/purchase")))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(&json!({"payment_method": "credit_card", "billing_address": billing()}));
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn listings_filter_sort_page_and_validate() {
    let server = market_server().start().await;
    let (seller, _) = server.register("seller@example.com").await;
    let (stranger, _) = server.register("stranger@example.com").await;
    let jar = create_jar(
        &server,
        &seller,
        json!({"name": "Notes", "description": "d"}),
    )
    .await;
    let offers = [
        ("Cheap tips", json!("9.99"), "business"),
        ("Lab manual", json!(49.5), "science"),
        ("Market atlas", json!("199"), "business"),
    ];
    for (title, price, category) in offers {
        list(
            &server,
            &seller,
            &jar,
            json!({"title": title, "price": price, "category": category,
                "license_type": "single_use", "preview_enabled": false}),
        )
        .await;
    }

    // Browsing needs no login.
    let all = server
        .get("/api/marketplace/honey-pots?sort=price", None)
        .await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.body);
    assert_eq!(ids(&all.body), ["Cheap tips", "Lab manual", "Market atlas"]);
    assert_eq!(all.body["listings"][1]["price"], "49.50");
    assert_eq!(all.body["listings"][1]["price_minor"], 4950);
    assert_eq!(all.body["total"], 3);
    let query = "/api/marketplace/honey-pots?category=business&price_min=10&sort=price";
    assert_eq!(ids(&server.get(query, None).await.body), ["Market atlas"]);
    let query = "/api/marketplace/honey-pots?price_max=49.50&sort=price&order=desc";
    assert_eq!(
        ids(&server.get(query, None).await.body),
        ["Lab manual", "Cheap tips"]
    );
    let query = "/api/marketplace/honey-pots?search=ATLAS";
    assert_eq!(ids(&server.get(query, None).await.body), ["Market atlas"]);
    let page = server
        .get(
            "/api/marketplace/honey-pots?sort=price&limit=1&offset=1",
            None,
        )
        .await;
    assert_eq!(
        (ids(&page.body), page.body["total"].clone()),
        (vec!["Lab manual".to_owned()], json!(3))
    );

    for bad in [
        "sort=cost",
        "price_min=1.999",
        "rating_min=6",
        "limit=0",
        "order=up",
    ] {
        server
            .get(&format!("/api/marketplace/honey-pots?{bad}"), None)
            .await
            .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR");
    }
    for price in [json!("-1"), json!(1e-3), json!("12.345"), json!(true)] {
        let reply = server
            .post(
                "/api/marketplace/honey-pots",
                Some(&seller),
                json!({"honey_jar_id": jar, "title": "t", "price": price, "category": "c",
                    "license_type": "personal"}),
            )
            .await;
        reply.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR");
    }
    // Only the jar's owner lists it; listing needs a login.
    let reply = server
        .post(
            "/api/marketplace/honey-pots",
            Some(&stranger),
            json!({"honey_jar_id": jar, "title": "Mine now", "price": "1", "category": "c",
                "license_type": "personal"}),
        )
        .await;
    reply.assert_error(StatusCode::NOT_FOUND, "RESOURCE_NOT_FOUND");
    let reply = server
        .post("/api/marketplace/honey-pots", None, json!({}))
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_paid_purchase_grants_search_once_and_for_the_licensed_documents() {
    if !onnxruntime_available("a_paid_purchase_grants_search_once_and_for_the_licensed_documents") {
        return;
    }
    let server = market_server().start().await;
    let admin = server.admin_token("admin@example.com").await;
    let (seller, _) = server.register("seller@example.com").await;
    let (buyer, _) = server.register("buyer@example.com").await;
    let (other, _) = server.register("other@example.com").await;
    let jar = create_jar(
        &server,
        &seller,
        json!({"name": "Beekeeping", "description": "d"}),
    )
    .await;
    let (_, body) = upload(
        &server,
        &seller,
        &jar,
        "swarms.txt",
        english("swarming in spring").into_bytes(),
        None,
    )
    .await;
    let first = body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        settled(&server, &seller, &first).await["status"],
        "processed"
    );
    let listing = list(
        &server,
        &seller,
        &jar,
        json!({"title": "Beekeeping notes", "description": "Field notes", "price": 25,
            "category": "hobby", "license_type": "single_use", "preview_enabled": true}),
    )
    .await;
    let id = listing["id"].as_str().unwrap().to_owned();
    assert_eq!(listing["price"], "25.00");

    let search = |token: String| {
        let server = &server;
        let jar = jar.clone();
        async move {
            server
                .post(
                    "/api/knowledge/search",
                    Some(&token),
                    json!({"query": "swarming in spring", "honey_jar_ids": [jar]}),
                )
                .await
        }
    };
    // Before buying: the jar is someone else's private jar.
    search(buyer.clone())
        .await
        .assert_error(StatusCode::NOT_FOUND, "RESOURCE_NOT_FOUND");
    // The preview shows titles and snippets only.
    let preview = server
        .post(
            &format!("/api/marketplace/honey-pots/{id}/preview"),
            Some(&other),
            json!({"query": "swarming"}),
        )
        .await;
    assert_eq!(preview.status, StatusCode::OK, "{}", preview.body);
    let results = preview.body["results"].as_array().unwrap();
    assert!(!results.is_empty());
    for result in results {
        assert!(result["snippet"].as_str().unwrap().chars().count() <= 160);
        assert!(result.get("text").is_none() && result.get("content").is_none());
    }

    // The seller cannot buy their own listing.
    let (status, body) = purchase(&server, &seller, &id, "own").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // Bad billing details.
    let reply = server
        .post(
            &format!("/api/marketplace/honey-pots/{id}/purchase"),
            Some(&buyer),
            json!({"payment_method": "credit_card", "billing_address": {"name": "Bo"}}),
        )
        .await;
    reply.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR");

    let (status, order) = purchase(&server, &buyer, &id, "order-1").await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    assert_eq!(order["status"], "pending_invoice");
    assert_eq!(order["amount"], "25.00");
    // The same key again: the same order, nothing charged twice.
    let (status, again) = purchase(&server, &buyer, &id, "order-1").await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["order_id"], order["order_id"]);
    let (status, body) = purchase(&server, &buyer, &id, "order-2").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["details"]["order_id"], order["order_id"]);

    // Unpaid: no access yet, and no rating.
    search(buyer.clone())
        .await
        .assert_error(StatusCode::NOT_FOUND, "RESOURCE_NOT_FOUND");
    let rate = |token: String, stars: u8| {
        let server = &server;
        let id = id.clone();
        async move {
            server
                .post(
                    &format!("/api/marketplace/honey-pots/{id}/rating"),
                    Some(&token),
                    json!({"rating": stars}),
                )
                .await
        }
    };
    assert_eq!(rate(buyer.clone(), 5).await.status, StatusCode::FORBIDDEN);
    let order_id = order["order_id"].as_str().unwrap();
    // The admin finds it among the invoices to settle.
    let queue = server
        .get("/api/admin/orders?status=pending_invoice", Some(&admin))
        .await;
    assert_eq!(queue.status, StatusCode::OK, "{}", queue.body);
    assert_eq!(queue.body["orders"][0]["order_id"], order_id);
    assert_eq!(
        server.get("/api/admin/orders", Some(&buyer)).await.status,
        StatusCode::FORBIDDEN
    );
    server
        .get("/api/admin/orders?status=lost", Some(&admin))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR");
    let paid = server
        .post(
            &format!("/api/admin/orders/{order_id}/paid"),
            Some(&buyer),
            json!({}),
        )
        .await;
    assert_eq!(paid.status, StatusCode::FORBIDDEN, "admins only");
    let paid = server
        .post(
            &format!("/api/admin/orders/{order_id}/paid"),
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.body);
    assert_eq!(paid.body["license_active"], true);

    // Paid: the buyer searches the jar; others still cannot.
    let found = search(buyer.clone()).await;
    assert_eq!(found.status, StatusCode::OK, "{}", found.body);
    assert!(
        found.body["results"][0]["document_id"] == first.as_str(),
        "{}",
        found.body
    );
    search(other.clone())
        .await
        .assert_error(StatusCode::NOT_FOUND, "RESOURCE_NOT_FOUND");
    // The license reads, it does not manage.
    let documents = server
        .get(
            &format!("/api/knowledge/honey-pots/{jar}/documents"),
            Some(&buyer),
        )
        .await;
    documents.assert_error(StatusCode::NOT_FOUND, "RESOURCE_NOT_FOUND");

    // single_use: a document added after the purchase is not part of it.
    let (_, body) = upload(
        &server,
        &seller,
        &jar,
        "later.txt",
        english("swarming in spring, revisited").into_bytes(),
        None,
    )
    .await;
    let later = body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        settled(&server, &seller, &later).await["status"],
        "processed"
    );
    let documents_of = |reply: &crate::harness::Reply| -> Vec<String> {
        reply.body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["document_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let buyer_sees = documents_of(&search(buyer.clone()).await);
    assert!(!buyer_sees.contains(&later), "{buyer_sees:?}");
    assert!(documents_of(&search(seller.clone()).await).contains(&later));

    // Ratings: buyers only, 1–5, a second one replaces the first.
    assert_eq!(rate(buyer.clone(), 5).await.body["rating"], 5.0);
    let rated = rate(buyer.clone(), 3).await;
    assert_eq!(
        (
            rated.body["rating"].clone(),
            rated.body["rating_count"].clone()
        ),
        (json!(3.0), json!(1))
    );
    rate(buyer.clone(), 6)
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR");
    assert_eq!(rate(other.clone(), 4).await.status, StatusCode::FORBIDDEN);

    // Withdrawn: no new buyers; the license already paid keeps working.
    let withdrawn = server
        .call(
            Method::DELETE,
            &format!("/api/marketplace/honey-pots/{id}"),
            Some(&seller),
            None,
        )
        .await;
    assert_eq!(withdrawn.body["status"], "withdrawn");
    let (status, body) = purchase(&server, &other, &id, "late").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let listed = server.get("/api/marketplace/honey-pots", None).await;
    assert_eq!(listed.body["total"], 0);
    assert_eq!(search(buyer.clone()).await.status, StatusCode::OK);
    let purchases = server.get("/api/marketplace/purchases", Some(&buyer)).await;
    assert_eq!(purchases.body["total"], 1);
    assert_eq!(purchases.body["orders"][0]["status"], "paid");
}
