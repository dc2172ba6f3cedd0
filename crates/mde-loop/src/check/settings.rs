//! The teacher, generation and training sections of the check: the endpoint URL (nothing is
//! sent), the API key as set / not set, prompt templates, training settings.

use super::*;

impl Checker {
    pub(super) fn teacher(&mut self, cfg: &LoopConfig) {
        let t = &cfg.teacher;
        if t.kind == TeacherChoice::World {
            self.push(
                "teacher",
                None,
                Status::Ok,
                "grounded world teacher (offline)",
            );
            return;
        }
        let e = &t.endpoint;
        let url = parse_http_url(&e.base_url);
        match &url {
            Ok((scheme, host)) => self.push(
                "teacher.base_url",
                None,
                Status::Ok,
                format!("{scheme}://{host} (not contacted)"),
            ),
            Err(m) => self.push(
                "teacher.base_url",
                None,
                Status::Invalid,
                format!("{:?}: {m}", e.base_url),
            ),
        }
        if e.model.trim().is_empty() {
            self.push("teacher.model", None, Status::Invalid, "model is empty");
        } else {
            self.push("teacher.model", None, Status::Ok, e.model.clone());
        }
        let local = url.as_ref().is_ok_and(|(_, h)| is_local_host(h));
        match &e.api_key_env {
            None => self.push(
                "teacher.api_key_env",
                None,
                Status::Note,
                "no api_key_env: requests carry no key",
            ),
            Some(var) => {
                let set = std::env::var_os(var).is_some_and(|v| !v.is_empty());
                if set {
                    self.push(
                        "teacher.api_key_env",
                        None,
                        Status::Ok,
                        format!("{var} is set"),
                    );
                } else if local {
                    self.push(
                        "teacher.api_key_env",
                        None,
                        Status::Note,
                        format!("{var} is not set: no key is sent (fine for a local server)"),
                    );
                } else {
                    self.push(
                        "teacher.api_key_env",
                        None,
                        Status::Missing,
                        format!("{var} is not set (export it before the run)"),
                    );
                }
            }
        }
        if e.kind == mde_gen::config::TeacherKind::Azure && e.azure_deployment.is_none() {
            self.push(
                "teacher.endpoint",
                None,
                Status::Invalid,
                "kind = \"azure\" needs azure_deployment",
            );
        }
        if e.vision {
            match &e.image_root {
                Some(r) => {
                    self.require_dir("teacher.image_root", r, "teacher image root");
                }
                None if e.allow_absolute_image_paths => self.push(
                    "teacher.image_root",
                    None,
                    Status::Note,
                    "vision = true without image_root: only absolute query image paths are sent (allow_absolute_image_paths = true)",
                ),
                None => self.push(
                    "teacher.image_root",
                    None,
                    Status::Invalid,
                    "vision = true needs image_root, the folder the query images are relative to: no local file outside it is ever sent to the teacher",
                ),
            }
        }
    }

    pub(super) fn gen(&mut self, cfg: &LoopConfig) {
        match &cfg.gen.prompt.generate_template {
            Some(p) => {
                if self.require_file("gen.prompt", p, "generation template") {
                    match std::fs::read_to_string(p) {
                        Ok(s) if !s.trim().is_empty() => {
                            self.push("gen.prompt", Some(p), Status::Ok, "template readable")
                        }
                        Ok(_) => {
                            self.push("gen.prompt", Some(p), Status::Invalid, "template is empty")
                        }
                        Err(e) => self.push("gen.prompt", Some(p), Status::Invalid, e.to_string()),
                    }
                }
            }
            None => self.push(
                "gen.prompt",
                None,
                Status::Note,
                "embedded generation template (generate_v1)",
            ),
        }
    }

    pub(super) fn train(&mut self, cfg: &LoopConfig) {
        let l = &cfg.train.lora;
        let unknown: Vec<&String> = l
            .target_modules
            .iter()
            .filter(|m| !LORA_TARGETS.contains(&m.as_str()))
            .collect();
        if !unknown.is_empty() {
            self.push(
                "train.lora",
                None,
                Status::Invalid,
                format!(
                    "unknown target_modules {unknown:?} (known: {})",
                    LORA_TARGETS.join(", ")
                ),
            );
        } else if l.r == 0 {
            self.push("train.lora", None, Status::Invalid, "r must be at least 1");
        } else {
            self.push(
                "train.lora",
                None,
                Status::Ok,
                format!(
                    "r {} alpha {} on {}",
                    l.r,
                    l.alpha,
                    l.target_modules.join(",")
                ),
            );
        }
        if let Some(a) = &l.init_adapter {
            let a = a.display().to_string();
            self.lora_path("train.lora.init_adapter", &a);
        }
    }
}

/// `http(s)://host[:port][/path]` -> (scheme, host[:port]).
fn parse_http_url(s: &str) -> Result<(String, String), String> {
    let (scheme, rest) = s
        .split_once("://")
        .ok_or("not a URL: expected http:// or https://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(format!("scheme {scheme:?}: expected http or https"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err("credentials in the URL are not supported: use api_key_env".into());
    }
    let host = if let Some(r) = authority.strip_prefix('[') {
        // IPv6 literal.
        let (h, tail) = r.split_once(']').ok_or("unclosed [ in the host")?;
        if !tail.is_empty() && !tail.strip_prefix(':').is_some_and(valid_port) {
            return Err(format!("bad port in {authority:?}"));
        }
        h.to_string()
    } else {
        let (h, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if let Some(p) = port {
            if !valid_port(p) {
                return Err(format!("bad port {p:?}"));
            }
        }
        h.to_string()
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':'))
    {
        return Err(format!("bad host {host:?}"));
    }
    Ok((scheme, authority.to_string()))
}

fn valid_port(p: &str) -> bool {
    !p.is_empty() && p.parse::<u16>().is_ok()
}

fn is_local_host(authority: &str) -> bool {
    let host = authority
        .strip_prefix('[')
        .and_then(|r| r.split(']').next())
        .unwrap_or_else(|| authority.rsplit_once(':').map_or(authority, |(h, _)| h));
    if host == "localhost" || host.ends_with(".local") {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => ip.is_loopback() || ip.is_private() || ip.is_link_local(),
        Ok(std::net::IpAddr::V6(ip)) => ip.is_loopback(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn urls() {
        assert_eq!(
            parse_http_url("https://api.openai.com/v1").unwrap().1,
            "api.openai.com"
        );
        assert_eq!(
            parse_http_url("http://127.0.0.1:8000/v1").unwrap().1,
            "127.0.0.1:8000"
        );
        assert!(parse_http_url("ftp://x/v1").is_err());
        assert!(parse_http_url("api.openai.com/v1").is_err());
        assert!(parse_http_url("http://h:99999/").is_err());
        assert!(parse_http_url("http:///v1").is_err());
        assert!(is_local_host("127.0.0.1:8000"));
        assert!(is_local_host("localhost:11434"));
        assert!(is_local_host("[::1]:8000"));
        assert!(!is_local_host("api.openai.com"));
    }
}
