//! One pull: resolve the reference to this architecture's manifest, then
//! fetch the config and the layers the host lacks into an OCI layout
//! (`oci-layout`, `index.json`, `blobs/sha256/…`). Blobs are written to
//! `<hex>.partial` and renamed once their digest checks, so an interrupted
//! pull into the same directory resumes where it stopped (an HTTP range
//! request) and a finished blob is never fetched twice.

use crate::auth::Challenge;
use crate::{Auths, Error, Reference, Result, io};
use base64::Engine as _;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_RANGE, CONTENT_TYPE, RANGE, WWW_AUTHENTICATE,
};
use sandstone_oci::Digest;
use sandstone_oci::image::Descriptor;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// A manifest is a small JSON document; a bigger answer is not one.
const MAX_MANIFEST: usize = 4 << 20;
/// A token service's answer: a token and a few fields.
const MAX_TOKEN: usize = 64 << 10;

/// Pulls images; one per daemon, its connections pooled.
pub struct Puller {
    http: reqwest::Client,
    auths: Auths,
}

/// What a pull fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// The manifest for this architecture.
    pub manifest: Digest,
    pub layers: usize,
    /// Layers not fetched because the host already has them unpacked.
    pub layers_present: usize,
    pub bytes_fetched: u64,
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Config {
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

impl Puller {
    pub fn new(auths: Auths) -> Puller {
        // A registry that does not answer fails the pull in bounded time;
        // a slow but live download is not cut short.
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .read_timeout(std::time::Duration::from_secs(60))
            .build()
            .unwrap_or_default();
        Puller { http, auths }
    }

    /// Pulls `image` into `dir` (created if missing; an earlier,
    /// interrupted pull of the same image there is resumed). Layers whose
    /// uncompressed digest `have_layer` accepts are left out of the
    /// layout: the host has them unpacked already.
    pub async fn pull(
        &self,
        image: &Reference,
        dir: &Path,
        have_layer: impl Fn(&Digest) -> bool,
    ) -> Result<Pulled> {
        let blobs = dir.join("blobs/sha256");
        tokio::fs::create_dir_all(&blobs)
            .await
            .map_err(io(format!("create {}", blobs.display())))?;
        let mut s = Session {
            puller: self,
            image,
            auth: None,
        };
        let (media_type, body, digest) = s.resolve().await?;
        let manifest: Manifest = parse(&body, "the image manifest")?;
        let config = manifest
            .config
            .ok_or_else(|| not_an_image("the manifest names no config"))?;
        if let Some(d) = manifest
            .layers
            .iter()
            .chain([&config])
            .find(|d| d.size == 0)
        {
            return Err(not_an_image(&format!(
                "the manifest gives blob {} no size",
                d.digest
            )));
        }
        let mut fetched = s.blob(&blobs, &config.digest, config.size).await?;
        let config_doc: Config = parse(
            &tokio::fs::read(blob_path(&blobs, &config.digest)?)
                .await
                .map_err(io("read the image config"))?,
            "the image config",
        )?;
        if config_doc.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(not_an_image(
                "the config's diff_ids and the manifest's layers differ in number",
            ));
        }
        let mut present = 0;
        for (layer, diff_id) in manifest.layers.iter().zip(&config_doc.rootfs.diff_ids) {
            if have_layer(&diff_id.parse()?) {
                present += 1;
                continue;
            }
            fetched += s.blob(&blobs, &layer.digest, layer.size).await?;
        }
        write(&blobs.join(hex_of(&digest)), &body).await?;
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": media_type, "digest": digest.to_string(), "size": body.len()}],
        });
        write(&dir.join("index.json"), index.to_string().as_bytes()).await?;
        write(
            &dir.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .await?;
        Ok(Pulled {
            manifest: digest,
            layers: manifest.layers.len(),
            layers_present: present,
            bytes_fetched: fetched,
        })
    }
}

/// One image's requests, holding the login the registry asked for.
struct Session<'a> {
    puller: &'a Puller,
    image: &'a Reference,
    /// The `Authorization` value once a challenge was answered.
    auth: Option<String>,
}

impl Session<'_> {
    fn http_error(&self, source: reqwest::Error) -> Error {
        Error::Http {
            registry: self.image.registry.clone(),
            source,
        }
    }

    /// GET `/v2/<repository>/<path>`, answering one 401 challenge.
    async fn get(
        &mut self,
        path: &str,
        accept: Option<&str>,
        from: u64,
    ) -> Result<reqwest::Response> {
        let url = format!(
            "{}/v2/{}/{path}",
            self.image.base_url(),
            self.image.repository
        );
        for attempt in 0..2 {
            let mut req = self.puller.http.get(&url);
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            if from > 0 {
                req = req.header(RANGE, format!("bytes={from}-"));
            }
            if let Some(h) = &self.auth {
                req = req.header(AUTHORIZATION, h);
            }
            let resp = req.send().await.map_err(|e| self.http_error(e))?;
            let status = resp.status().as_u16();
            if status == 401 && attempt == 0 {
                let challenge = resp
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(Challenge::parse);
                self.login(challenge).await?;
                continue;
            }
            return match status {
                200..=299 => Ok(resp),
                404 => Err(Error::NotFound {
                    registry: self.image.registry.clone(),
                    what: format!("{}/{path}", self.image.repository),
                }),
                401 | 403 => Err(self.refused(format!("it answered {status}"))),
                _ => Err(Error::Status {
                    registry: self.image.registry.clone(),
                    what: format!("{}/{path}", self.image.repository),
                    status,
                }),
            };
        }
        Err(self.refused("it asked for a login again after one was given".into()))
    }

    fn refused(&self, reason: String) -> Error {
        Error::Unauthorized {
            registry: self.image.registry.clone(),
            repository: self.image.repository.clone(),
            reason,
        }
    }

    /// Answers a registry's challenge: basic credentials, or a bearer
    /// token fetched from its realm (with the credentials, if the daemon
    /// has some for this registry, else anonymously).
    async fn login(&mut self, challenge: Option<Challenge>) -> Result<()> {
        let creds = self.puller.auths.get(&self.image.registry);
        match challenge {
            Some(Challenge::Basic) => {
                let (user, pass) = creds.ok_or_else(|| {
                    self.refused("it needs a login and the daemon has none for it".into())
                })?;
                let pair = format!("{user}:{}", pass.expose());
                let b64 = base64::engine::general_purpose::STANDARD.encode(pair);
                self.auth = Some(format!("Basic {b64}"));
            }
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                let scope =
                    scope.unwrap_or_else(|| format!("repository:{}:pull", self.image.repository));
                let mut query = vec![("scope", scope)];
                query.extend(service.map(|s| ("service", s)));
                let mut req = self.puller.http.get(&realm).query(&query);
                if let Some((user, pass)) = creds {
                    req = req.basic_auth(user, Some(pass.expose()));
                }
                let resp = req.send().await.map_err(|e| self.http_error(e))?;
                if !resp.status().is_success() {
                    return Err(self.refused(format!(
                        "its token service answered {}",
                        resp.status().as_u16()
                    )));
                }
                #[derive(Deserialize)]
                struct Token {
                    #[serde(default)]
                    token: Option<String>,
                    #[serde(default)]
                    access_token: Option<String>,
                }
                let answer = self.body(resp, MAX_TOKEN, "its token answer").await?;
                let t: Token = serde_json::from_slice(&answer)
                    .map_err(|_| self.refused("its token service sent no token".into()))?;
                let token = t
                    .token
                    .or(t.access_token)
                    .ok_or_else(|| self.refused("its token service sent no token".into()))?;
                self.auth = Some(format!("Bearer {token}"));
            }
            None => return Err(self.refused("it answered 401 without a usable challenge".into())),
        }
        Ok(())
    }

    /// A manifest or index, checked against the digest the reference pins
    /// or the registry states.
    async fn manifest(&mut self, reference: &str) -> Result<(String, Vec<u8>, Digest)> {
        let accept = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST].join(", ");
        let resp = self
            .get(&format!("manifests/{reference}"), Some(&accept), 0)
            .await?;
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_string());
        let stated = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        let body = self.body(resp, MAX_MANIFEST, "a manifest").await?;
        let got = Digest::of(&body);
        let want = reference.parse::<Digest>().ok().or(stated);
        if let Some(want) = want
            && want != got
        {
            return Err(sandstone_oci::Error::DigestMismatch {
                what: "a manifest's digest",
                expected: want,
                actual: got,
            }
            .into());
        }
        let doc: Manifest = parse(&body, "a manifest")?;
        let media_type = doc
            .media_type
            .or(content_type)
            .unwrap_or_else(|| OCI_MANIFEST.to_string());
        Ok((media_type, body, got))
    }

    /// The image manifest for linux on this architecture, through as many
    /// indexes as the registry nests (four at most).
    async fn resolve(&mut self) -> Result<(String, Vec<u8>, Digest)> {
        let mut reference = self.image.manifest();
        for _ in 0..4 {
            let (media_type, body, digest) = self.manifest(&reference).await?;
            if media_type != OCI_INDEX && media_type != DOCKER_LIST {
                return Ok((media_type, body, digest));
            }
            let index: Manifest = parse(&body, "an image index")?;
            let entries = index.manifests.unwrap_or_default();
            reference = sandstone_oci::image::choose_platform(&entries)?
                .digest
                .clone();
        }
        Err(not_an_image("indexes nest too deep"))
    }

    /// A small answer read whole, refused past `max` bytes: a registry
    /// cannot make the daemon hold more than that in memory.
    async fn body(&self, mut resp: reqwest::Response, max: usize, what: &str) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.http_error(e))? {
            if out.len() + chunk.len() > max {
                return Err(Error::Oversized {
                    registry: self.image.registry.clone(),
                    what: what.to_string(),
                    size: max as u64,
                });
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Fetches blob `digest` (of `size` bytes, as its descriptor states)
    /// into `blobs` unless it is there; resumes a `.partial` left by an
    /// interrupted pull. A registry that sends more is cut off, so it
    /// cannot fill the disk. Returns the bytes fetched.
    async fn blob(&mut self, blobs: &Path, digest: &str, size: u64) -> Result<u64> {
        let want: Digest = digest.parse()?;
        let path = blob_path(blobs, digest)?;
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(0);
        }
        let partial = path.with_extension("partial");
        let have = tokio::fs::metadata(&partial).await.map_or(0, |m| m.len());
        // A partial at or past the stated size is not worth resuming.
        let from = if have >= size { 0 } else { have };
        let mut resp = self.get(&format!("blobs/{digest}"), None, from).await?;
        let resumed = from > 0
            && resp.status().as_u16() == 206
            && resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with(&format!("bytes {from}-")));
        let mut hash = Sha256::new();
        let mut file = if resumed {
            // What is already there counts toward the digest.
            let mut f = tokio::fs::File::open(&partial)
                .await
                .map_err(io("reopen a partial blob"))?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf).await.map_err(io("read a partial blob"))?;
                if n == 0 {
                    break;
                }
                hash.update(&buf[..n]);
            }
            tokio::fs::OpenOptions::new()
                .append(true)
                .open(&partial)
                .await
                .map_err(io("append to a partial blob"))?
        } else {
            tokio::fs::File::create(&partial)
                .await
                .map_err(io("create a blob file"))?
        };
        let mut fetched = 0u64;
        let already = if resumed { from } else { 0 };
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.http_error(e))? {
            if already + fetched + chunk.len() as u64 > size {
                drop(file);
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(Error::Oversized {
                    registry: self.image.registry.clone(),
                    what: format!("blob {digest}"),
                    size,
                });
            }
            hash.update(&chunk);
            file.write_all(&chunk).await.map_err(io("write a blob"))?;
            fetched += chunk.len() as u64;
        }
        file.sync_all().await.map_err(io("sync a blob"))?;
        let got: Digest = format!("sha256:{}", hex::encode(hash.finalize())).parse()?;
        if got != want {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(sandstone_oci::Error::DigestMismatch {
                what: "a downloaded blob's digest",
                expected: want,
                actual: got,
            }
            .into());
        }
        tokio::fs::rename(&partial, &path)
            .await
            .map_err(io("keep a blob"))?;
        Ok(fetched)
    }
}

fn hex_of(d: &Digest) -> String {
    d.to_string().trim_start_matches("sha256:").to_string()
}

/// Where blob `digest` goes: its hex digits, checked, so a registry's
/// answer never names a path.
fn blob_path(blobs: &Path, digest: &str) -> Result<PathBuf> {
    Ok(blobs.join(hex_of(&digest.parse()?)))
}

fn parse<T: serde::de::DeserializeOwned>(data: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(data).map_err(|e| not_an_image(&format!("{what}: {e}")))
}

fn not_an_image(why: &str) -> Error {
    sandstone_oci::Error::NotAnImage(why.to_string()).into()
}

async fn write(path: &Path, data: &[u8]) -> Result<()> {
    tokio::fs::write(path, data)
        .await
        .map_err(io(format!("write {}", path.display())))
}
