"""Chroma baseline for `cargo bench --bench search`.

Reads the corpus the Rust bench wrote (see benches/search.rs for the layout), inserts it into a
persistent Chroma collection (cosine HNSW, Chroma's defaults otherwise), then runs the same
queries unfiltered and with the same tag filter, and prints one JSON object:
insert rate, p50/p99 latency in ms and recall@10 against the bench's exact answers.
"""

import json
import sys
import tempfile
import time

import chromadb
import numpy as np

K = 10


def main(corpus_dir: str) -> None:
    meta = json.load(open(f"{corpus_dir}/corpus.json"))
    dims, count, queries = meta["dims"], meta["chunks"], meta["queries"]
    vectors = np.fromfile(f"{corpus_dir}/vectors.f32", dtype="<f4").reshape(count, dims)
    query_vectors = np.fromfile(f"{corpus_dir}/queries.f32", dtype="<f4").reshape(queries, dims)
    tags = np.fromfile(f"{corpus_dir}/tags.u8", dtype="u1")
    truth = json.load(open(f"{corpus_dir}/truth.json"))
    texts = [f"chunk {i}" for i in range(count)]

    with tempfile.TemporaryDirectory() as path:
        client = chromadb.PersistentClient(path=path)
        collection = client.create_collection("bench", metadata={"hnsw:space": "cosine"})
        batch = 5000
        started = time.perf_counter()
        for at in range(0, count, batch):
            end = min(at + batch, count)
            collection.add(
                ids=[str(i) for i in range(at, end)],
                embeddings=vectors[at:end],
                documents=texts[at:end],
                metadatas=[{"tag": f"t{tags[i]}"} for i in range(at, end)],
            )
        insert_rate = count / (time.perf_counter() - started)

        def run(where, expected):
            latencies, recall = [], 0.0
            for q, exact in zip(query_vectors, expected):
                t = time.perf_counter()
                # Texts and distances too: Sting's search returns each chunk's text and score.
                found = collection.query(
                    query_embeddings=[q],
                    n_results=K,
                    where=where,
                    include=["documents", "distances"],
                )
                latencies.append((time.perf_counter() - t) * 1000)
                ids = {int(i) for i in found["ids"][0]}
                recall += len(ids & set(exact)) / K
            latencies.sort()
            return {
                "p50_ms": latencies[len(latencies) // 2],
                "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
                "recall_at_10": recall / len(expected),
            }

        result = {
            "chroma_version": chromadb.__version__,
            "insert_per_s": insert_rate,
            "unfiltered": run(None, truth["unfiltered"]),
            "filtered": run({"tag": f"t{meta['filter_tag']}"}, truth["filtered"]),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
