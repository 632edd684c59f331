// The JSON API as the console uses it. The admin token lives in sessionStorage only (this
// tab, gone when it closes) and travels as an Authorization header, never in a URL.

const TOKEN_KEY = "csft-admin-token";

export const adminToken = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set: (token) => sessionStorage.setItem(TOKEN_KEY, token),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

/** The server's own words: every error body is `{"detail": string}`. */
function detailOf(status, text) {
  try {
    const detail = JSON.parse(text).detail;
    if (typeof detail === "string") return detail;
  } catch (_) { /* not JSON (a proxy's page): fall through to the raw text */ }
  return text || `HTTP ${status}`;
}

function adminHeaders(token) {
  return { Authorization: `Bearer ${token ?? adminToken.get()}` };
}

export async function request(method, path, { body, admin = false, token } = {}) {
  const headers = admin ? adminHeaders(token) : {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path.replace(/^\//, ""), {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new ApiError(response.status, detailOf(response.status, text));
  return text ? JSON.parse(text) : null;
}

export const getJSON = (path, opts) => request("GET", path, opts);

/** Multipart upload through XHR, because fetch cannot report upload progress. */
export function uploadDiff(file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "v1/admin/diffs");
    xhr.setRequestHeader("Authorization", adminHeaders().Authorization);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.onload = () => (xhr.status === 201
      ? resolve(JSON.parse(xhr.responseText))
      : reject(new ApiError(xhr.status, detailOf(xhr.status, xhr.responseText))));
    xhr.onerror = () => reject(new ApiError(0, "the upload did not reach the server"));
    const form = new FormData();
    form.append("file", file, file.name);
    xhr.send(form);
  });
}
