//! Server-rendered pages for the path without script: the result page of one or more tasks
//! and the page that says why an upload was refused.

use std::fmt::Write as _;

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use serde_json::Value;
use shoal_core::error::ShoalErrorBody;

/// Escapes text for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

fn page(title: &str, refresh: bool, main: &str) -> String {
    let refresh = if refresh {
        // Without script the page refreshes itself until every task has settled.
        "<meta http-equiv=\"refresh\" content=\"2\">\n"
    } else {
        ""
    };
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n{refresh}\
         <title>{title} — shoal</title>\n<link rel=\"icon\" href=\"data:,\">\n\
         <link rel=\"stylesheet\" href=\"/assets/app.css\">\n</head>\n<body>\n\
         <header><h1><a href=\"/\">shoal</a></h1></header>\n<main>\n{main}\
         <p><a class=\"back\" href=\"/\">Upload more images</a></p>\n</main>\n</body>\n</html>\n",
        title = escape(title),
    )
}

/// The page saying why a request was refused, with the refusal's status.
pub fn refusal(status: StatusCode, reason: &str) -> Response {
    let main = format!(
        "<h2>That did not work</h2>\n<p class=\"error\" role=\"alert\">{}</p>\n",
        escape(reason)
    );
    let mut response = (status, Html(page("Refused", false, &main))).into_response();
    // The page is the error body: keep it rather than the uniform `Error: …` text.
    response.extensions_mut().insert(ShoalErrorBody);
    response
}

fn state_text(task: &Value) -> String {
    match task["state"].as_str().unwrap_or("") {
        "queued" => "Queued".to_owned(),
        "processing" => "Processing…".to_owned(),
        "finished" => "Done".to_owned(),
        "failed" => format!(
            "Failed: {}",
            task["error"].as_str().unwrap_or("unknown reason")
        ),
        other => other.to_owned(),
    }
}

fn extension(format: &str) -> &str {
    match format {
        "jpeg" => "jpg",
        other => other,
    }
}

/// The result page of `tasks` (the master's JSON of each).
pub fn tasks(tasks: &[Value]) -> Response {
    let mut main = String::new();
    let mut unsettled = false;
    for task in tasks {
        let id = task["id"].as_u64().unwrap_or(0);
        let state = task["state"].as_str().unwrap_or("");
        let op = task["op"].as_str().unwrap_or("");
        let format = task["format"].as_str().unwrap_or("png");
        unsettled |= state == "queued" || state == "processing";
        let _ = write!(
            main,
            "<article class=\"card\" data-id=\"{id}\" data-state=\"{state}\">\n\
             <h2>Task {id} <small>{op}</small></h2>\n<p class=\"status\"{alert}>{status}</p>\n\
             <div class=\"images\">\n<figure><img class=\"original\" src=\"/api/v1/tasks/{id}/original\" \
             alt=\"Original image of task {id}\"><figcaption>Original</figcaption></figure>\n",
            state = escape(state),
            op = escape(op),
            alert = if state == "failed" {
                " role=\"alert\""
            } else {
                ""
            },
            status = escape(&state_text(task)),
        );
        if state == "finished" {
            let _ = write!(
                main,
                "<figure><img class=\"result\" src=\"/api/v1/tasks/{id}/result\" \
                 alt=\"Result ({op}) of task {id}\"><figcaption>Result</figcaption></figure>\n</div>\n\
                 <p><a class=\"download\" href=\"/api/v1/tasks/{id}/result\" \
                 download=\"task-{id}-result.{ext}\">Download result</a></p>\n",
                op = escape(op),
                ext = escape(extension(format)),
            );
        } else {
            main.push_str("</div>\n");
        }
        main.push_str("</article>\n");
    }
    let title = match tasks {
        [one] => format!("Task {}", one["id"].as_u64().unwrap_or(0)),
        many => format!("{} tasks", many.len()),
    };
    Html(page(&title, unsettled, &main)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape("<img src=x onerror=\"a&b\">'"),
            "&lt;img src=x onerror=&quot;a&amp;b&quot;&gt;&#39;"
        );
    }
}
