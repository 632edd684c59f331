// An upload refusal in plain words. The server's detail starts with a stable code for every
// diff it refused ("header_too_large: ...", the codes of docs/FORMAT.md); the person reads a
// sentence about their file, and the server's own detail stays beside it, smaller.

const BY_CODE = {
  not_safetensors: "This file is not a safetensors diff.",
  truncated: "This file is cut short: it ends before its header or its tensors do (an interrupted download?).",
  // a header length of gigabytes is what any other file's first eight bytes read as
  header_too_large: "This file is not a safetensors diff.",
  file_too_large: "This file is larger than the server accepts for one diff.",
  bad_metadata: "The diff's metadata is missing, invalid or contradicts itself.",
  bad_layout: "The diff's tensors are not laid out as a diff's are (stray, unpaired or a missing head).",
  bad_dtype: "A tensor of the diff has a data type diffs cannot use.",
  length_mismatch: "The diff's index and value tensors do not match in length.",
  unsorted_indices: "The diff's indices are unsorted or repeated.",
  index_out_of_range: "An index of the diff points outside its parameter.",
  non_finite: "The diff contains NaN or infinite values.",
  unknown_tensor: "The diff names parameters this base does not have: it was made for another model.",
  head_shape: "The diff's head does not fit this base (wrong shape).",
  nested_too_deep: "The diff's header or metadata nests JSON far deeper than any diff does.",
  fingerprint_mismatch: "This diff was made for a different base model, not the one this server runs.",
};

// Refusals before the file was read, which carry no code.
const BY_STATUS = {
  0: "The upload did not reach the server (connection lost).",
  401: "The admin token was not accepted: sign out and sign in again.",
  403: "The admin token was not accepted: sign out and sign in again.",
  408: "The upload took too long and was cut off.",
  413: "This file is larger than the server accepts for one diff.",
  503: "The server cannot publish now (its registry or storage is unavailable); nothing was published.",
  507: "The server has no room to store the diff; nothing was published.",
};

/** {sentence, detail}: what to tell the person, and the server's detail as it sent it. */
export function describeRefusal(status, detail) {
  const code = /^([a-z_]+):/.exec(detail || "")?.[1];
  const sentence = BY_CODE[code] ?? BY_STATUS[status] ?? "The server refused the upload.";
  return { sentence, detail: detail || (status ? `HTTP ${status}` : "") };
}
