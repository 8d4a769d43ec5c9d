//! Honey jars and document ingestion with the fixture embedding model and real files generated
//! here (a 3-page PDF, a DOCX, HTML, Markdown, JSON, CSV).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sting_actors::ingestion::samples;

use crate::harness::{onnxruntime_available, ServerOptions, TestServer};

const PROCESSING_TIMEOUT: Duration = Duration::from_secs(60);

fn knowledge_server() -> ServerOptions {
    ServerOptions::new().env("STING_RATE_LIMITS__UPLOAD__REQUESTS", "1000")
}

pub async fn create_jar(server: &TestServer, token: &str, body: Value) -> String {
    let reply = server
        .post("/api/knowledge/honey-pots", Some(token), body)
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    reply.body["id"].as_str().unwrap().to_owned()
}

/// Uploads a file; returns the response status and body.
pub async fn upload(
    server: &TestServer,
    token: &str,
    jar: &str,
    filename: &str,
    bytes: Vec<u8>,
    metadata: Option<Value>,
) -> (StatusCode, Value) {
    let mut form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(bytes).file_name(filename.to_owned()),
    );
    if let Some(metadata) = metadata {
        form = form.text("metadata", metadata.to_string());
    }
    let reply = server
        .multipart(
            &format!("/api/knowledge/honey-pots/{jar}/documents"),
            token,
            form,
        )
        .await;
    (reply.status, reply.body)
}

/// Polls a document until it leaves `processing`.
pub async fn settled(server: &TestServer, token: &str, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + PROCESSING_TIMEOUT;
    loop {
        let reply = server
            .get(&format!("/api/knowledge/documents/{id}"), Some(token))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        if reply.body["status"] != "processing" {
            return reply.body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still processing: {}",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn english(topic: &str) -> String {
    format!(
        "This page explains {topic}. The honey bee colony works together through the seasons, \
         and every worker has a task that changes as she grows older. Foragers collect nectar \
         and pollen, while house bees build comb and feed the young."
    )
}

#[tokio::test]
async fn documents_of_every_format_are_processed() {
    if !onnxruntime_available("documents_of_every_format_are_processed") {
        return;
    }
    let server = knowledge_server().start().await;
    let (token, _) = server.register("files@example.com").await;
    let jar = create_jar(
        &server,
        &token,
        json!({"name": "Handbook", "description": "Everything", "tags": ["HR", "bees"]}),
    )
    .await;

    let pdf = samples::pdf(&[
        &english("the hive"),
        &english("vacation policy"),
        &english("swarming"),
    ]);
    let docx = samples::docx(
        "Employee Guide",
        &[
            (Some("Benefits"), english("benefits").as_str()),
            (None, english("leave").as_str()),
        ],
    );
    let files: Vec<(&str, Vec<u8>, &str)> = vec![
        ("handbook.pdf", pdf, "pdf"),
        ("guide.docx", docx, "docx"),
        (
            "page.html",
            format!("<!doctype html><html><head><title>Hive</title></head><body><h1>Hive</h1><p>{}</p><script>var x=1;</script></body></html>", english("hives")).into_bytes(),
            "html",
        ),
        ("notes.md", format!("# Notes\n\n{}\n\n## More\n\n{}\n", english("notes"), english("more")).into_bytes(), "markdown"),
        ("data.json", json!({"colony": {"queen": 1, "workers": 50000, "motto": english("data")}}).to_string().into_bytes(), "json"),
        ("table.csv", b"name,role\nAda,forager\nBea,nurse\n".to_vec(), "csv"),
        ("plain.txt", english("plain text").into_bytes(), "text"),
    ];
    let mut ids = Vec::new();
    for (name, bytes, kind) in files {
        let (status, body) = upload(&server, &token, &jar, name, bytes, None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{name}: {body}");
        assert_eq!(body["status"], "processing", "{body}");
        assert_eq!(body["document_type"], kind, "{name}: {body}");
        assert_eq!(body["processing_progress"], 0);
        ids.push((name, body["id"].as_str().unwrap().to_owned()));
    }
    for (name, id) in &ids {
        let document = settled(&server, &token, id).await;
        assert_eq!(document["status"], "processed", "{name}: {document}");
        assert!(
            document["chunk_count"].as_u64().unwrap() >= 1,
            "{name}: {document}"
        );
        assert_eq!(document["chunk_count"], document["embedding_count"]);
        assert_eq!(document["processing_progress"], 100);
        assert!(document["processing_time"].as_f64().is_some());
        assert!(
            document["metadata"]["word_count"].as_u64().unwrap() > 0,
            "{name}: {document}"
        );
        if *name == "handbook.pdf" {
            assert_eq!(document["metadata"]["pages"], 3, "{document}");
            assert!(
                document["chunk_count"].as_u64().unwrap() >= 3,
                "a chunk per page at least"
            );
            assert_eq!(document["metadata"]["language"], "en", "{document}");
        }
    }
    let jar_now = server
        .get(&format!("/api/knowledge/honey-pots/{jar}"), Some(&token))
        .await;
    assert_eq!(jar_now.body["document_count"], 7, "{}", jar_now.body);
    assert_eq!(jar_now.body["tags"], json!(["hr", "bees"]));
    let listed = server
        .get(
            &format!("/api/knowledge/honey-pots/{jar}/documents?limit=5"),
            Some(&token),
        )
        .await;
    assert_eq!(listed.body["total"], 7);
    assert_eq!(listed.body["documents"].as_array().unwrap().len(), 5);

    // Deleting a document removes it and its counts.
    let (_, pdf_id) = &ids[0];
    let deleted = server
        .call(
            Method::DELETE,
            &format!("/api/knowledge/documents/{pdf_id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.body);
    server
        .get(&format!("/api/knowledge/documents/{pdf_id}"), Some(&token))
        .await
        .assert_error(StatusCode::NOT_FOUND, "RESOURCE_NOT_FOUND");
    let jar_after = server
        .get(&format!("/api/knowledge/honey-pots/{jar}"), Some(&token))
        .await;
    assert_eq!(jar_after.body["document_count"], 6);
}

#[tokio::test]
async fn bad_files_fail_with_a_reason() {
    if !onnxruntime_available("bad_files_fail_with_a_reason") {
        return;
    }
    let server = knowledge_server()
        .env("STING_KNOWLEDGE__MAX_UPLOAD_BYTES", "100000")
        .start()
        .await;
    let (token, _) = server.register("badfiles@example.com").await;
    let jar = create_jar(&server, &token, json!({"name": "Bad files"})).await;

    let (status, body) = upload(
        &server,
        &token,
        &jar,
        "broken.pdf",
        b"%PDF-1.4\n\x00\x01garbage".to_vec(),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let broken = settled(&server, &token, body["id"].as_str().unwrap()).await;
    assert_eq!(broken["status"], "failed");
    assert!(
        broken["error"]
            .as_str()
            .is_some_and(|e| e.contains("corrupt")),
        "{broken}"
    );

    let png = [&b"\x89PNG\r\n\x1a\n"[..], &[0u8; 64]].concat();
    let (status, body) = upload(&server, &token, &jar, "photo.txt", png, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "failed");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("unsupported")),
        "{body}"
    );

    // Names are sanitised; metadata is applied and validated.
    let (_, body) = upload(
        &server,
        &token,
        &jar,
        "../../etc/passwd.md",
        b"# Title\n\nSome words here.".to_vec(),
        Some(json!({"title": "Safe", "tags": ["A"]})),
    )
    .await;
    assert_eq!(body["filename"], "passwd.md");
    assert_eq!(body["title"], "Safe");
    assert_eq!(body["tags"], json!(["a"]));
    let (status, body) = upload(
        &server,
        &token,
        &jar,
        "x.md",
        b"# x".to_vec(),
        Some(json!({"title": 5})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    let (status, body) = upload(&server, &token, &jar, "big.txt", vec![b'a'; 150_000], None).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let listed = server
        .get(
            &format!("/api/knowledge/honey-pots/{jar}/documents"),
            Some(&token),
        )
        .await;
    assert_eq!(listed.body["total"], 3, "the refused upload left nothing");
}

#[tokio::test]
async fn jar_access_follows_visibility_and_sharing() {
    let server = knowledge_server().start().await;
    let (alice, alice_id) = server.register("alice.jars@example.com").await;
    let (bob, _) = server.register("bob.jars@example.com").await;
    let (carol, _) = server.register("carol.jars@example.com").await;
    let admin = server.admin_token("admin.jars@example.com").await;

    let private = create_jar(&server, &alice, json!({"name": "Private notes"})).await;
    let shared = create_jar(
        &server,
        &alice,
        json!({"name": "Team notes", "visibility": "shared"}),
    )
    .await;
    let public = create_jar(
        &server,
        &alice,
        json!({"name": "Public notes", "visibility": "public", "tags": ["open"]}),
    )
    .await;
    let reply = server
        .call(
            Method::PUT,
            &format!("/api/knowledge/honey-pots/{shared}/shares"),
            Some(&alice),
            Some(json!({"emails": ["BOB.jars@example.com"]})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(
        reply.body["shared_with"][0]["email"],
        "bob.jars@example.com"
    );

    let names = |body: &Value| -> Vec<String> {
        let mut names: Vec<String> = body["honey_jars"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    let list = |token: String| {
        let server = &server;
        async move {
            server
                .get("/api/knowledge/honey-pots", Some(&token))
                .await
                .body
        }
    };
    assert_eq!(
        names(&list(alice.clone()).await),
        ["Private notes", "Public notes", "Team notes"]
    );
    assert_eq!(
        names(&list(bob.clone()).await),
        ["Public notes", "Team notes"]
    );
    assert_eq!(names(&list(carol.clone()).await), ["Public notes"]);
    assert_eq!(list(admin.clone()).await["total"], 3);
    let bob_view = list(bob.clone()).await;
    assert!(bob_view["honey_jars"][0]["owner"]["name"].is_string());
    assert!(bob_view["honey_jars"][0].get("shared_with").is_none());
    // A reader of a public jar sees its owner's name, not her email; she and admins do.
    let public_path = format!("/api/knowledge/honey-pots/{public}");
    let carol_view = server.get(&public_path, Some(&carol)).await.body;
    assert!(carol_view["owner"]["name"].is_string(), "{carol_view}");
    assert!(carol_view["owner"].get("email").is_none(), "{carol_view}");
    for token in [&alice, &admin] {
        let view = server.get(&public_path, Some(token)).await.body;
        assert_eq!(view["owner"]["email"], "alice.jars@example.com", "{view}");
    }

    // Reading: (jar, user, readable)
    let matrix = [
        (&private, &bob, false),
        (&private, &carol, false),
        (&private, &admin, true),
        (&shared, &bob, true),
        (&shared, &carol, false),
        (&public, &carol, true),
    ];
    for (jar, token, readable) in matrix {
        for path in [
            format!("/api/knowledge/honey-pots/{jar}"),
            format!("/api/knowledge/honey-pots/{jar}/documents"),
        ] {
            let reply = server.get(&path, Some(token)).await;
            if readable {
                assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.body);
            } else {
                reply.assert_error(StatusCode::NOT_FOUND, "RESOURCE_NOT_FOUND");
            }
        }
    }
    // Readers who do not own a jar cannot change it; strangers do not learn it exists.
    let rename = json!({"name": "Mine now"});
    server
        .call(
            Method::PUT,
            &format!("/api/knowledge/honey-pots/{shared}"),
            Some(&bob),
            Some(rename.clone()),
        )
        .await
        .assert_error(StatusCode::FORBIDDEN, "PERMISSION_DENIED");
    server
        .call(
            Method::PUT,
            &format!("/api/knowledge/honey-pots/{private}"),
            Some(&bob),
            Some(rename.clone()),
        )
        .await
        .assert_error(StatusCode::NOT_FOUND, "RESOURCE_NOT_FOUND");
    server
        .call(
            Method::DELETE,
            &format!("/api/knowledge/honey-pots/{public}"),
            Some(&carol),
            None,
        )
        .await
        .assert_error(StatusCode::FORBIDDEN, "PERMISSION_DENIED");
    let (status, _) = upload(&server, &bob, &shared, "x.txt", b"hello".to_vec(), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = upload(&server, &carol, &private, "x.txt", b"hello".to_vec(), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Filters.
    let filtered = server
        .get(
            &format!("/api/knowledge/honey-pots?tag=open&owner={alice_id}"),
            Some(&bob),
        )
        .await;
    assert_eq!(names(&filtered.body), ["Public notes"]);
    let searched = server
        .get("/api/knowledge/honey-pots?search=team", Some(&bob))
        .await;
    assert_eq!(names(&searched.body), ["Team notes"]);
    server
        .get("/api/knowledge/honey-pots?visibility=secret", Some(&bob))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR");

    // Unsharing takes Bob's access away; the owner deletes the jar.
    server
        .call(
            Method::PUT,
            &format!("/api/knowledge/honey-pots/{shared}/shares"),
            Some(&alice),
            Some(json!({"emails": []})),
        )
        .await;
    server
        .get(&format!("/api/knowledge/honey-pots/{shared}"), Some(&bob))
        .await
        .assert_error(StatusCode::NOT_FOUND, "RESOURCE_NOT_FOUND");
    let deleted = server
        .call(
            Method::DELETE,
            &format!("/api/knowledge/honey-pots/{shared}"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert_eq!(list(alice).await["total"], 2);
}

#[tokio::test]
async fn ingestion_interrupted_by_a_crash_resumes_at_restart() {
    if !onnxruntime_available("ingestion_interrupted_by_a_crash_resumes_at_restart") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let options = || {
        knowledge_server()
            .env("STING_KNOWLEDGE__INGESTION_CONCURRENCY", "1")
            .env("STING_KNOWLEDGE__EMBED_BATCH", "4")
    };
    let mut server = options().start_in(dir.path()).await;
    let (token, _) = server.register("crash@example.com").await;
    let jar = create_jar(
        &server,
        &token,
        json!({"name": "Encrypted", "settings": {"encryption_enabled": true}}),
    )
    .await;
    // Long enough that the crash comes while it is processed; the second one waits behind it.
    let long = (0..3000)
        .map(|i| format!("Paragraph {i}: {}\n\n", english("the archive")))
        .collect::<String>();
    let (_, first) = upload(
        &server,
        &token,
        &jar,
        "archive.txt",
        long.into_bytes(),
        None,
    )
    .await;
    let (_, second) = upload(
        &server,
        &token,
        &jar,
        "secret.md",
        b"# Secret\n\nThe queen's recipe is lavender honey.".to_vec(),
        None,
    )
    .await;
    server.kill();

    // The originals are encrypted at rest.
    let blob = std::fs::read(
        dir.path()
            .join("blobs")
            .join(&jar)
            .join(second["id"].as_str().unwrap()),
    )
    .unwrap();
    assert!(
        !blob.windows(8).any(|w| w == b"lavender"),
        "stored in clear"
    );

    let server = options().start_in(dir.path()).await;
    let login = server
        .login("crash@example.com", "correct horse battery")
        .await;
    let token = login.body["session_token"].as_str().unwrap().to_owned();
    for document in [&first, &second] {
        let done = settled(&server, &token, document["id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "processed", "{done}");
    }
    assert!(
        server
            .log()
            .contains("resuming documents interrupted by a restart"),
        "the restarted node picked the documents up again"
    );
    let jar_now = server
        .get(&format!("/api/knowledge/honey-pots/{jar}"), Some(&token))
        .await;
    assert_eq!(jar_now.body["document_count"], 2, "{}", jar_now.body);
    assert_eq!(jar_now.body["settings"]["encryption_enabled"], true);
}

async fn search(server: &TestServer, token: &str, body: Value) -> crate::harness::Reply {
    server
        .post("/api/knowledge/search", Some(token), body)
        .await
}

fn result_documents(reply: &crate::harness::Reply) -> Vec<String> {
    reply.body["results"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", reply.body))
        .iter()
        .map(|r| r["document_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn search_finds_pages_and_never_leaks_other_jars() {
    if !onnxruntime_available("search_finds_pages_and_never_leaks_other_jars") {
        return;
    }
    let server = knowledge_server().start().await;
    let (alice, _) = server.register("alice.search@example.com").await;
    let (bob, _) = server.register("bob.search@example.com").await;
    let jar = create_jar(&server, &alice, json!({"name": "Alice's handbook"})).await;
    let pdf = samples::pdf(&[
        &english("the hive"),
        "Page two describes the lavender meadow protocol for late summer foraging.",
        &english("winter"),
    ]);
    let (_, pdf_doc) = upload(
        &server,
        &alice,
        &jar,
        "handbook.pdf",
        pdf,
        Some(json!({"tags": ["policy"]})),
    )
    .await;
    let (_, md_doc) = upload(
        &server,
        &alice,
        &jar,
        "notes.md",
        b"# Notes\n\nThe meadow is quiet in winter.".to_vec(),
        None,
    )
    .await;
    let pdf_id = pdf_doc["id"].as_str().unwrap().to_owned();
    let md_id = md_doc["id"].as_str().unwrap().to_owned();
    for id in [&pdf_id, &md_id] {
        assert_eq!(settled(&server, &alice, id).await["status"], "processed");
    }

    let found = search(
        &server,
        &alice,
        json!({"query": "lavender meadow protocol"}),
    )
    .await;
    assert_eq!(found.status, StatusCode::OK, "{}", found.body);
    let first = &found.body["results"][0];
    assert_eq!(first["document_id"], pdf_id.as_str(), "{}", found.body);
    assert_eq!(first["metadata"]["page"], 2, "{}", found.body);
    assert_eq!(first["honey_jar_id"], jar.as_str());
    assert_eq!(first["title"], "handbook");
    assert!(first["content"]
        .as_str()
        .unwrap()
        .contains("lavender meadow protocol"));
    let score = first["score"].as_f64().unwrap();
    assert!(score > 0.0 && score <= 1.0);
    assert_eq!(found.body["searched_documents"], 2);
    assert!(found.body["total_results"].as_u64().unwrap() >= 2);
    assert!(found.body["query_time"].as_f64().is_some());

    // Filters.
    let markdown_only = search(
        &server,
        &alice,
        json!({"query": "meadow", "filters": {"document_types": ["markdown"]}}),
    )
    .await;
    assert!(
        result_documents(&markdown_only).iter().all(|d| *d == md_id),
        "{}",
        markdown_only.body
    );
    let tagged = search(
        &server,
        &alice,
        json!({"query": "meadow", "filters": {"tags": ["POLICY"]}, "include_content": false}),
    )
    .await;
    assert!(!result_documents(&tagged).is_empty());
    assert!(
        result_documents(&tagged).iter().all(|d| *d == pdf_id),
        "{}",
        tagged.body
    );
    assert!(tagged.body["results"][0].get("content").is_none());

    // Bob: a named private jar is not found; an open search never shows Alice's chunks.
    search(
        &server,
        &bob,
        json!({"query": "lavender", "honey_jar_ids": [jar]}),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, "RESOURCE_NOT_FOUND");
    let open = search(&server, &bob, json!({"query": "lavender meadow protocol"})).await;
    assert_eq!(open.status, StatusCode::OK);
    assert!(result_documents(&open).is_empty(), "{}", open.body);
    // Public but closed to search: readable, not searchable by others.
    server
        .call(
            Method::PUT,
            &format!("/api/knowledge/honey-pots/{jar}"),
            Some(&alice),
            Some(json!({"visibility": "public", "settings": {"allow_search": false}})),
        )
        .await;
    search(
        &server,
        &bob,
        json!({"query": "lavender", "honey_jar_ids": [jar]}),
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, "PERMISSION_DENIED");
    assert!(
        result_documents(&search(&server, &bob, json!({"query": "lavender"})).await).is_empty()
    );
    server
        .call(
            Method::PUT,
            &format!("/api/knowledge/honey-pots/{jar}"),
            Some(&alice),
            Some(json!({"settings": {"allow_search": true}})),
        )
        .await;
    let shared = search(&server, &bob, json!({"query": "lavender meadow protocol"})).await;
    assert_eq!(
        result_documents(&shared)[0],
        pdf_id,
        "public and searchable now"
    );

    // Bad requests.
    for bad in [
        json!({"query": ""}),
        json!({"query": "x", "limit": 0}),
        json!({"query": "x", "limit": 101}),
    ] {
        search(&server, &alice, bad)
            .await
            .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR");
    }

    // A deleted document is gone from search at once.
    server
        .call(
            Method::DELETE,
            &format!("/api/knowledge/documents/{pdf_id}"),
            Some(&alice),
            None,
        )
        .await;
    let after = search(
        &server,
        &alice,
        json!({"query": "lavender meadow protocol"}),
    )
    .await;
    assert!(
        !result_documents(&after).contains(&pdf_id),
        "{}",
        after.body
    );
    assert_eq!(after.body["searched_documents"], 1);
}

#[tokio::test]
async fn ask_and_chat_answer_from_permitted_jars_with_sources() {
    if !onnxruntime_available("ask_and_chat_answer_from_permitted_jars_with_sources") {
        return;
    }
    let server = knowledge_server()
        .env("STING_CHAT__SYSTEM_PROMPT", "You are Bee.")
        .env("STING_RATE_LIMITS__CHAT__REQUESTS", "1000")
        .start()
        .await;
    let (alice, _) = server.register("alice.ask@example.com").await;
    let (bob, _) = server.register("bob.ask@example.com").await;
    let jar = create_jar(&server, &alice, json!({"name": "Field guide"})).await;
    let pdf = samples::pdf(&[
        &english("hives"),
        "The lavender meadow protocol starts in August.",
    ]);
    let (_, doc) = upload(&server, &alice, &jar, "guide.pdf", pdf, None).await;
    let doc_id = doc["id"].as_str().unwrap().to_owned();
    assert_eq!(
        settled(&server, &alice, &doc_id).await["status"],
        "processed"
    );

    let asked = server
        .post(
            "/api/knowledge/ask",
            Some(&alice),
            json!({"question": "When does the lavender meadow protocol start?", "honey_jar_ids": [jar], "context_limit": 3}),
        )
        .await;
    assert_eq!(asked.status, StatusCode::OK, "{}", asked.body);
    let source = &asked.body["sources"][0];
    assert_eq!(source["document_id"], doc_id.as_str(), "{}", asked.body);
    assert_eq!(source["page"], 2);
    assert_eq!(source["title"], "guide");
    assert_eq!(asked.body["model_used"], "fixture-chat");
    assert!(asked.body["answer"].is_string());
    let confidence = asked.body["confidence"].as_f64().unwrap();
    assert!(confidence > 0.0 && confidence <= 1.0, "{}", asked.body);
    assert!(asked.body["response_time"].as_f64().is_some());

    server
        .post(
            "/api/knowledge/ask",
            Some(&bob),
            json!({"question": "lavender?", "honey_jar_ids": [jar]}),
        )
        .await
        .assert_error(StatusCode::NOT_FOUND, "RESOURCE_NOT_FOUND");
    let nothing = server
        .post(
            "/api/knowledge/ask",
            Some(&bob),
            json!({"question": "lavender meadow protocol"}),
        )
        .await;
    assert_eq!(nothing.body["sources"], json!([]), "{}", nothing.body);
    assert_eq!(nothing.body["confidence"], 0.0);
    server
        .post(
            "/api/knowledge/ask",
            Some(&alice),
            json!({"question": "x", "context_limit": 0}),
        )
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR");

    // A chat turn naming the jar gets the sources in its prompt; Bob's naming it is refused.
    let question = "When does the lavender meadow protocol start?";
    let plain = server
        .post(
            "/api/chat/message",
            Some(&alice),
            json!({"message": question, "context": {"max_tokens": 2}}),
        )
        .await;
    let grounded = server
        .post(
            "/api/chat/message",
            Some(&alice),
            json!({"message": question, "context": {"max_tokens": 2, "honey_jar_ids": [jar]}}),
        )
        .await;
    assert_eq!(grounded.status, StatusCode::OK, "{}", grounded.body);
    let tokens =
        |reply: &crate::harness::Reply| reply.body["metadata"]["prompt_tokens"].as_u64().unwrap();
    assert!(
        tokens(&grounded) > tokens(&plain),
        "sources were added: {} vs {}",
        grounded.body,
        plain.body
    );
    let refused = server
        .post(
            "/api/chat/message",
            Some(&bob),
            json!({"message": question, "context": {"honey_jar_ids": [jar]}}),
        )
        .await;
    refused.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR");
    assert_eq!(
        refused.body["error"]["details"]["field"],
        "context.honey_jar_ids"
    );
}

/// Downloads a jar's HJX export: its Content-Disposition and the archive.
async fn export(server: &TestServer, token: &str, jar: &str) -> (String, Vec<u8>) {
    let response = server
        .client
        .get(server.url(&format!("/api/knowledge/honey-pots/{jar}/export")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/gzip");
    let disposition = response.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    (disposition, response.bytes().await.unwrap().to_vec())
}

async fn import(
    server: &TestServer,
    token: &str,
    archive: Vec<u8>,
    name: Option<&str>,
) -> crate::harness::Reply {
    let mut form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(archive).file_name("jar.hjx"),
    );
    if let Some(name) = name {
        form = form.text("name", name.to_owned());
    }
    server
        .multipart("/api/knowledge/honey-pots/import", token, form)
        .await
}

/// The entries of a gzip'd tar, in order: (name, content).
fn entries(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut reader = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    reader
        .entries()
        .unwrap()
        .map(|entry| {
            let mut entry = entry.unwrap();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            let name = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
            (name, data)
        })
        .collect()
}

/// A gzip'd tar of these entries, the names written into the headers as given (even `..`).
fn pack(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut builder = tar::Builder::new(gzip);
    for (name, data) in entries {
        let mut header = tar::Header::new_ustar();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append(&header, data.as_slice()).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// A search of one jar as what a user sees of it, in rank order: (title, content, page, score).
async fn ranked(server: &TestServer, token: &str, jar: &str, query: &str) -> Vec<Value> {
    let reply = search(
        server,
        token,
        json!({"query": query, "honey_jar_ids": [jar]}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| json!([r["title"], r["content"], r["metadata"]["page"], r["score"]]))
        .collect()
}

#[tokio::test]
async fn honey_jars_travel_as_hjx_archives() {
    if !onnxruntime_available("honey_jars_travel_as_hjx_archives") {
        return;
    }
    let server = knowledge_server()
        .env("STING_LIMITS__MAX_IMPORT_BYTES", "1000000")
        .start()
        .await;
    let (alice, _) = server.register("alice.hjx@example.com").await;
    let (bob, bob_id) = server.register("bob.hjx@example.com").await;
    let (carol, _) = server.register("carol.hjx@example.com").await;
    let jar = create_jar(
        &server,
        &alice,
        json!({"name": "Field guide", "description": "Bees", "tags": ["bees"],
               "visibility": "shared", "settings": {"encryption_enabled": true}}),
    )
    .await;
    server
        .call(
            Method::PUT,
            &format!("/api/knowledge/honey-pots/{jar}/shares"),
            Some(&alice),
            Some(json!({"emails": ["carol.hjx@example.com"]})),
        )
        .await;
    let pdf = samples::pdf(&[
        &english("the hive"),
        "Page two describes the lavender meadow protocol for late summer foraging.",
        &english("winter"),
    ]);
    let notes = b"# Notes\n\nThe meadow is quiet in winter.".to_vec();
    let (_, pdf_doc) = upload(
        &server,
        &alice,
        &jar,
        "handbook.pdf",
        pdf,
        Some(json!({"tags": ["policy"]})),
    )
    .await;
    let (_, notes_doc) = upload(&server, &alice, &jar, "notes.md", notes.clone(), None).await;
    let png = [&b"\x89PNG\r\n\x1a\n"[..], &[0u8; 64]].concat();
    let (_, failed) = upload(&server, &alice, &jar, "photo.txt", png, None).await;
    assert_eq!(failed["status"], "failed");
    for document in [&pdf_doc, &notes_doc] {
        let id = document["id"].as_str().unwrap();
        assert_eq!(settled(&server, &alice, id).await["status"], "processed");
    }
    let query = "lavender meadow protocol";
    let original = ranked(&server, &alice, &jar, query).await;
    assert!(original.len() >= 2, "{original:?}");

    // Who may export: a reader only when the jar allows it; a stranger does not see it.
    let export_path = format!("/api/knowledge/honey-pots/{jar}/export");
    server
        .get(&export_path, Some(&carol))
        .await
        .assert_error(StatusCode::FORBIDDEN, "PERMISSION_DENIED");
    server
        .get(&export_path, Some(&bob))
        .await
        .assert_error(StatusCode::NOT_FOUND, "RESOURCE_NOT_FOUND");
    let (disposition, archive) = export(&server, &alice, &jar).await;
    assert_eq!(disposition, "attachment; filename=\"Field guide.hjx\"");
    server
        .call(
            Method::PUT,
            &format!("/api/knowledge/honey-pots/{jar}"),
            Some(&alice),
            Some(json!({"settings": {"allow_export": true}})),
        )
        .await;
    export(&server, &carol, &jar).await;

    // The archive: the manifest, the originals decrypted, the failed upload listed as skipped.
    let files: std::collections::HashMap<String, Vec<u8>> = entries(&archive).into_iter().collect();
    assert_eq!(files.len(), 5, "{:?}", files.keys());
    let manifest: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    assert_eq!(manifest["format"], "hjx");
    assert_eq!(manifest["version"], 1);
    assert_eq!(
        manifest["embedding_model"],
        json!({"name": "fixture-embed", "dimensions": 32})
    );
    assert_eq!(manifest["honey_jar"]["visibility"], "shared");
    assert_eq!(manifest["skipped"][0]["id"], failed["id"]);
    let listed = manifest["documents"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    let notes_entry = listed.iter().find(|d| d["filename"] == "notes.md").unwrap();
    assert_eq!(
        files[notes_entry["original"].as_str().unwrap()],
        notes,
        "exported decrypted"
    );

    // Bob imports it: a new private jar of his, searchable at once, ranking the same.
    let reply = import(&server, &bob, archive.clone(), Some("Bob's guide")).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let copy = reply.body["id"].as_str().unwrap().to_owned();
    assert_ne!(copy, jar);
    assert_eq!(reply.body["owner_id"], bob_id.as_str());
    assert_eq!(reply.body["owner"]["email"], "bob.hjx@example.com");
    assert_eq!(reply.body["name"], "Bob's guide");
    assert_eq!(reply.body["description"], "Bees");
    assert_eq!(reply.body["tags"], json!(["bees"]));
    assert_eq!(reply.body["visibility"], "private");
    assert_eq!(reply.body["settings"]["encryption_enabled"], true);
    assert_eq!(reply.body["imported_documents"], 2);
    assert_eq!(reply.body["reembedding"], false);
    assert_eq!(reply.body["document_count"], 2);
    let documents = server
        .get(
            &format!("/api/knowledge/honey-pots/{copy}/documents"),
            Some(&bob),
        )
        .await;
    for document in documents.body["documents"].as_array().unwrap() {
        assert_eq!(document["status"], "processed", "{document}");
        // Encrypted at rest with the new jar's own key.
        let blob = std::fs::read(
            server
                .data_dir
                .join("blobs")
                .join(&copy)
                .join(document["id"].as_str().unwrap()),
        )
        .unwrap();
        assert!(!blob.windows(6).any(|w| w == b"meadow"), "stored in clear");
    }
    assert_eq!(ranked(&server, &bob, &copy, query).await, original);
    server
        .get(&format!("/api/knowledge/honey-pots/{jar}"), Some(&bob))
        .await
        .assert_error(StatusCode::NOT_FOUND, "RESOURCE_NOT_FOUND");

    // From another embedding model, the originals are embedded here instead.
    let foreign: Vec<(String, Vec<u8>)> = entries(&archive)
        .into_iter()
        .map(|(name, data)| {
            if name != "manifest.json" {
                return (name, data);
            }
            let mut manifest: Value = serde_json::from_slice(&data).unwrap();
            manifest["embedding_model"]["name"] = "another-model".into();
            (name, serde_json::to_vec(&manifest).unwrap())
        })
        .collect();
    let reply = import(&server, &bob, pack(&foreign), None).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(reply.body["reembedding"], true);
    assert_eq!(reply.body["name"], "Field guide");
    let reembedded = reply.body["id"].as_str().unwrap().to_owned();
    let documents = server
        .get(
            &format!("/api/knowledge/honey-pots/{reembedded}/documents"),
            Some(&bob),
        )
        .await;
    for document in documents.body["documents"].as_array().unwrap() {
        let id = document["id"].as_str().unwrap();
        assert_eq!(settled(&server, &bob, id).await["status"], "processed");
    }
    assert_eq!(ranked(&server, &bob, &reembedded, query).await, original);

    // Refused archives create nothing.
    let mut evil = entries(&archive);
    evil.push(("../evil.sh".into(), b"#!/bin/sh\n".to_vec()));
    let refused = import(&server, &bob, pack(&evil), None).await;
    refused.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR");
    assert_eq!(refused.body["error"]["details"]["entry"], "../evil.sh");
    import(&server, &bob, b"not an archive".to_vec(), None)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    // Beyond the limit while it streams in (a Content-Length beyond it is refused before the
    // body is read, which a client may see as a broken pipe).
    import(&server, &bob, vec![0x1f; 1_030_000], None)
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE");
    let bobs = server.get("/api/knowledge/honey-pots", Some(&bob)).await;
    assert_eq!(bobs.body["total"], 2, "{}", bobs.body);
    // Every import, taken or refused, unpacked under <data_dir>/imports and left nothing there.
    assert_eq!(leftover_imports(&server), Vec::<String>::new());
}

/// What is in the imports' private temporary directory (which must exist, 0700).
fn leftover_imports(server: &TestServer) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let dir = server.data_dir.join("imports");
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{}", dir.display());
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// An import sent by hand over plain HTTP with `Expect: 100-continue`, its body held back: the
/// node answers `100 Continue` only once the import's handler reads the body, that is once it
/// holds its place among the imports under way.
struct HeldImport {
    stream: tokio::net::TcpStream,
    body: Vec<u8>,
    sent: usize,
}

const BOUNDARY: &str = "sting-e2e-boundary";

impl HeldImport {
    async fn open(server: &TestServer, token: &str, archive: &[u8]) -> HeldImport {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let body = [
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; \
                 filename=\"jar.hjx\"\r\nContent-Type: application/gzip\r\n\r\n"
            )
            .as_bytes(),
            archive,
            format!("\r\n--{BOUNDARY}--\r\n").as_bytes(),
        ]
        .concat();
        let authority = server.base.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(authority).await.unwrap();
        let head = format!(
            "POST /api/knowledge/honey-pots/import HTTP/1.1\r\nHost: {authority}\r\n\
             Authorization: Bearer {token}\r\n\
             Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\
             Content-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let expected = b"HTTP/1.1 100 Continue\r\n\r\n";
        let mut answer = vec![0u8; expected.len()];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut answer))
            .await
            .expect("the node reads the body of the first import")
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&answer),
            String::from_utf8_lossy(expected)
        );
        HeldImport {
            stream,
            body,
            sent: 0,
        }
    }

    /// Sends the next `len` bytes of the body.
    async fn send(&mut self, len: usize) {
        use tokio::io::AsyncWriteExt;
        let end = self.sent.saturating_add(len).min(self.body.len());
        self.stream
            .write_all(&self.body[self.sent..end])
            .await
            .unwrap();
        self.sent = end;
    }

    /// Sends the rest of the body; returns the final answer's status and JSON body.
    async fn finish(mut self) -> (u16, Value) {
        use tokio::io::AsyncReadExt;
        self.send(usize::MAX).await;
        let mut answer = Vec::new();
        tokio::time::timeout(PROCESSING_TIMEOUT, self.stream.read_to_end(&mut answer))
            .await
            .expect("the import answers")
            .unwrap();
        let answer = String::from_utf8(answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn imports_beyond_the_concurrency_limit_are_refused_at_once() {
    if !onnxruntime_available("imports_beyond_the_concurrency_limit_are_refused_at_once") {
        return;
    }
    let server = knowledge_server()
        .env("STING_LIMITS__MAX_CONCURRENT_IMPORTS", "1")
        .start()
        .await;
    let (alice, _) = server.register("alice.imports@example.com").await;
    let (bob, _) = server.register("bob.imports@example.com").await;
    let jar = create_jar(&server, &alice, json!({"name": "Meadow notes"})).await;
    let notes = format!("# Notes\n\n{}", english("the meadow in winter"));
    let (_, document) = upload(&server, &alice, &jar, "notes.md", notes.into(), None).await;
    let id = document["id"].as_str().unwrap();
    assert_eq!(settled(&server, &alice, id).await["status"], "processed");
    let (_, archive) = export(&server, &alice, &jar).await;

    // Alice's import holds the only place while its archive trickles in ...
    let mut first = HeldImport::open(&server, &alice, &archive).await;
    first.send(archive.len() / 2).await;
    // ... so Bob's is refused at once, without waiting for it, and nothing is created.
    let refused = import(&server, &bob, archive.clone(), None).await;
    refused.assert_error(StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE");
    assert!(
        refused
            .header("retry-after")
            .is_some_and(|secs| secs.parse::<u64>().is_ok_and(|secs| secs >= 1)),
        "{:?}",
        refused.headers
    );
    let bobs = server.get("/api/knowledge/honey-pots", Some(&bob)).await;
    assert_eq!(bobs.body["total"], 0, "{}", bobs.body);

    // The first one completes; then its place is free again.
    let (status, body) = first.finish().await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["imported_documents"], 1, "{body}");
    assert_eq!(body["reembedding"], false, "{body}");
    let retried = import(&server, &bob, archive, Some("Bob's notes")).await;
    assert_eq!(retried.status, StatusCode::CREATED, "{}", retried.body);
    assert_eq!(retried.body["document_count"], 1, "{}", retried.body);
    assert_eq!(leftover_imports(&server), Vec::<String>::new());
}

#[tokio::test]
async fn amplifying_uploads_fail_within_budget_and_the_node_stays_up() {
    if !onnxruntime_available("amplifying_uploads_fail_within_budget_and_the_node_stays_up") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut server = knowledge_server().start_in(dir.path()).await;
    let (token, _) = server.register("amplify@example.com").await;
    let jar = create_jar(&server, &token, json!({"name": "Amplifiers"})).await;
    let mut failed = Vec::new();
    for (name, bytes) in samples::amplifying() {
        let (status, body) = upload(&server, &token, &jar, name, bytes, None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{name}: {body}");
        let done = settled(&server, &token, body["id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "failed", "{name}: {done}");
        assert!(
            done["error"]
                .as_str()
                .is_some_and(|e| e.contains("exceeds the extraction limits")),
            "{name}: {done}"
        );
        failed.push(done["id"].as_str().unwrap().to_owned());
    }
    server.stop();

    // Started again, it resumes nothing of them and serves.
    let server = knowledge_server().start_in(dir.path()).await;
    let token = server
        .session_token("amplify@example.com", "correct horse battery")
        .await;
    for id in &failed {
        let document = settled(&server, &token, id).await;
        assert_eq!(document["status"], "failed", "{document}");
    }
    let (_, body) = upload(
        &server,
        &token,
        &jar,
        "fine.md",
        format!("# Fine\n\n{}", english("a file of ordinary shape")).into_bytes(),
        None,
    )
    .await;
    let fine = settled(&server, &token, body["id"].as_str().unwrap()).await;
    assert_eq!(fine["status"], "processed", "{fine}");
    assert_eq!(
        server.get("/api/system/health", None).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_document_that_keeps_interrupting_its_node_is_failed_not_resumed() {
    if !onnxruntime_available("a_document_that_keeps_interrupting_its_node_is_failed_not_resumed") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let options = || {
        knowledge_server()
            .env("STING_KNOWLEDGE__INGESTION_CONCURRENCY", "1")
            .env("STING_KNOWLEDGE__EMBED_BATCH", "4")
            .env("STING_KNOWLEDGE__MAX_PROCESSING_ATTEMPTS", "1")
            // It is polled closely.
            .env("STING_RATE_LIMITS__GENERAL__REQUESTS", "100000")
    };
    let mut server = options().start_in(dir.path()).await;
    let (token, _) = server.register("again@example.com").await;
    let jar = create_jar(&server, &token, json!({"name": "Again"})).await;
    // Long enough to be caught while its chunks are embedded.
    let long = (0..20_000)
        .map(|i| format!("Paragraph {i}: {}\n\n", english("the archive")))
        .collect::<String>();
    let (_, body) = upload(&server, &token, &jar, "long.txt", long.into_bytes(), None).await;
    let id = body["id"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + PROCESSING_TIMEOUT;
    loop {
        let document = server
            .get(&format!("/api/knowledge/documents/{id}"), Some(&token))
            .await
            .body;
        assert_eq!(
            document["status"], "processing",
            "finished too soon: {document}"
        );
        if document["processing_progress"].as_u64().unwrap_or(0) >= 30 {
            break; // its one run is under way (and counted)
        }
        assert!(tokio::time::Instant::now() < deadline, "{document}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill();

    let server = options().start_in(dir.path()).await;
    let token = server
        .session_token("again@example.com", "correct horse battery")
        .await;
    let document = settled(&server, &token, &id).await;
    assert_eq!(document["status"], "failed", "{document}");
    assert!(
        document["error"]
            .as_str()
            .is_some_and(|e| e.contains("did not finish in 1 attempt")),
        "{document}"
    );
}
