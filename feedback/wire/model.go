package wire

import (
	"encoding/json"
	"fmt"
	"time"
)

// Schemas of the fleet side's payloads: what retune workers read and
// publish.
const (
	ModelOfferSchema  = "scopewatch.model.offer/v1"
	ModelChunkSchema  = "scopewatch.model.chunk/v1"
	RetuneEventSchema = "scopewatch.retune.event/v1"
)

// ModelChunkData is the bundle archive's bytes per chunk: base64 makes
// 120 KiB of it, which with the other fields stays under MaxPayload.
const ModelChunkData = 90 << 10

// MaxModelChunks bounds what a device must reassemble: 1024 chunks are
// 90 MiB, far above a bundle (the default is under 5 MB).
const MaxModelChunks = 1024

// ModelOffer announces a signed bundle to a site's devices: retained on
// {root}/{site}/model/offer, its archive (a tar, as `scopewatch bundle
// pack` writes it) in Chunks chunks under .../model/chunk/{version}/{i}.
// A device checks the reassembled archive's size and sha256 against the
// offer before it verifies the bundle itself (hashes, signature by a key
// it trusts).
type ModelOffer struct {
	Schema  string `json:"schema"`
	Site    string `json:"site"`
	Name    string `json:"name"`
	Version string `json:"version"`
	// Incumbent is the version the offer was retuned from.
	Incumbent string `json:"incumbent"`
	// SHA256 and Size are the archive's; Chunks how many chunks carry it,
	// ChunkSize bytes each but the last.
	SHA256    string `json:"sha256"`
	Size      int64  `json:"size"`
	Chunks    int    `json:"chunks"`
	ChunkSize int    `json:"chunk_size"`
	// ManifestSHA256 and Signer identify the bundle inside: the signer is
	// the base64 ed25519 key that signed its manifest.
	ManifestSHA256 string    `json:"manifest_sha256"`
	Signer         string    `json:"signer"`
	Request        string    `json:"request,omitempty"`
	Created        time.Time `json:"created"`
}

// ModelChunk is one piece of an offered archive.
type ModelChunk struct {
	Schema  string `json:"schema"`
	Version string `json:"version"`
	Index   int    `json:"index"`
	Count   int    `json:"count"`
	SHA256  string `json:"sha256"` // of the whole archive
	Data    []byte `json:"data"`
}

// RetuneEvent reports a retune job's progress on
// {root}/{site}/retune/event: queued, running, accepted (with the offered
// version), refused or failed (with the reason).
type RetuneEvent struct {
	Schema  string    `json:"schema"`
	ID      string    `json:"id"`
	Site    string    `json:"site"`
	Request string    `json:"request"`
	State   string    `json:"state"`
	Detail  string    `json:"detail,omitempty"`
	Version string    `json:"version,omitempty"`
	At      time.Time `json:"at"`
}

// Retune job states, as RetuneEvent.State.
const (
	RetuneQueued   = "queued"
	RetuneRunning  = "running"
	RetuneAccepted = "accepted"
	RetuneRefused  = "refused"
	RetuneFailed   = "failed"
)

var (
	offerKeys  = keys("schema", "site", "name", "version", "incumbent", "sha256", "size", "chunks", "chunk_size", "manifest_sha256", "signer", "request", "created")
	mchunkKeys = keys("schema", "version", "index", "count", "sha256", "data")
	retuneKeys = keys("schema", "id", "site", "device", "model_version", "reason", "evidence", "feedback_ids", "time")
)

// validVersion accepts what a topic level and a bundle version both
// allow: 1-64 bytes of [a-z0-9._-], starting with a letter or digit (a
// device names a folder after the version: "." and ".." must not pass).
func validVersion(v string) bool {
	if v == "" || len(v) > 64 || !(v[0] >= 'a' && v[0] <= 'z' || v[0] >= '0' && v[0] <= '9') {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// Validate checks an offer's fields.
func (o ModelOffer) Validate() error {
	bad := func(field, want string) error {
		return fmt.Errorf("%w: model offer %q: %s: want %s", ErrInvalid, o.Version, field, want)
	}
	switch {
	case !validID(o.Site):
		return bad("site", "1-128 characters of [A-Za-z0-9._-]")
	case !printable(o.Name, 128):
		return bad("name", "1-128 printable characters")
	case !validVersion(o.Version):
		return bad("version", "1-64 characters of [a-z0-9._-]")
	case !validVersion(o.Incumbent):
		return bad("incumbent", "1-64 characters of [a-z0-9._-]")
	case !isHex64(o.SHA256):
		return bad("sha256", "64 lowercase hex digits")
	case !isHex64(o.ManifestSHA256):
		return bad("manifest_sha256", "64 lowercase hex digits")
	case o.ChunkSize < 1 || o.ChunkSize > ModelChunkData:
		return bad("chunk_size", fmt.Sprintf("1..%d", ModelChunkData))
	case o.Size < 1 || o.Size > int64(MaxModelChunks)*int64(o.ChunkSize):
		return bad("size", fmt.Sprintf("1..%d", int64(MaxModelChunks)*int64(o.ChunkSize)))
	case int64(o.Chunks) != (o.Size+int64(o.ChunkSize)-1)/int64(o.ChunkSize):
		return bad("chunks", "ceil(size/chunk_size)")
	case !printable(o.Signer, 128):
		return bad("signer", "the signer's base64 public key")
	case o.Request != "" && !validID(o.Request):
		return bad("request", "1-128 characters of [A-Za-z0-9._-]")
	case o.Created.IsZero():
		return bad("created", "an RFC 3339 time")
	}
	return nil
}

// Encode marshals an offer with its schema set.
func (o ModelOffer) Encode() ([]byte, error) {
	o.Schema = ModelOfferSchema
	if err := o.Validate(); err != nil {
		return nil, err
	}
	return json.Marshal(o)
}

// DecodeModelOffer parses and validates an offer.
func DecodeModelOffer(data []byte) (ModelOffer, error) {
	var o ModelOffer
	if _, err := decodeStrict(data, ModelOfferSchema, offerKeys, &o); err != nil {
		return ModelOffer{}, err
	}
	if err := o.Validate(); err != nil {
		return ModelOffer{}, err
	}
	return o, nil
}

// SplitModel cuts an archive into the chunk payloads of an offer: the
// offer's Size, SHA256, Chunks and ChunkSize are set from archive.
func SplitModel(o *ModelOffer, archive []byte) ([][]byte, error) {
	o.Size, o.SHA256, o.ChunkSize = int64(len(archive)), SHA256Hex(archive), ModelChunkData
	o.Chunks = (len(archive) + ModelChunkData - 1) / ModelChunkData
	if err := o.Validate(); err != nil {
		return nil, err
	}
	out := make([][]byte, o.Chunks)
	for i := range o.Chunks {
		part := archive[i*ModelChunkData : min(len(archive), (i+1)*ModelChunkData)]
		p, err := json.Marshal(ModelChunk{Schema: ModelChunkSchema, Version: o.Version, Index: i, Count: o.Chunks, SHA256: o.SHA256, Data: part})
		if err != nil {
			return nil, err
		}
		out[i] = p
	}
	return out, nil
}

// DecodeModelChunk parses and validates a chunk of an offered archive.
func DecodeModelChunk(data []byte) (ModelChunk, error) {
	var c ModelChunk
	if _, err := decodeStrict(data, ModelChunkSchema, mchunkKeys, &c); err != nil {
		return ModelChunk{}, err
	}
	switch {
	case !validVersion(c.Version):
		return ModelChunk{}, fmt.Errorf("%w: model chunk: version", ErrInvalid)
	case c.Count < 1 || c.Count > MaxModelChunks:
		return ModelChunk{}, fmt.Errorf("%w: model chunk of %s: count %d not in 1..%d", ErrInvalid, c.Version, c.Count, MaxModelChunks)
	case c.Index < 0 || c.Index >= c.Count:
		return ModelChunk{}, fmt.Errorf("%w: model chunk of %s: index %d not in 0..%d", ErrInvalid, c.Version, c.Index, c.Count-1)
	case !isHex64(c.SHA256):
		return ModelChunk{}, fmt.Errorf("%w: model chunk of %s: sha256", ErrInvalid, c.Version)
	case len(c.Data) == 0 || len(c.Data) > ModelChunkData:
		return ModelChunk{}, fmt.Errorf("%w: model chunk of %s: data must be 1..%d bytes", ErrInvalid, c.Version, ModelChunkData)
	case c.Index < c.Count-1 && len(c.Data) != ModelChunkData:
		return ModelChunk{}, fmt.Errorf("%w: model chunk of %s: only the last chunk may be short", ErrInvalid, c.Version)
	}
	return c, nil
}

// AssembleModel joins an offer's chunks (any order, each exactly once)
// and checks the result against the offer's size and sha256.
func AssembleModel(o ModelOffer, chunks []ModelChunk) ([]byte, error) {
	if len(chunks) != o.Chunks {
		return nil, fmt.Errorf("%w: model %s: %d of %d chunks", ErrInvalid, o.Version, len(chunks), o.Chunks)
	}
	parts := make([][]byte, o.Chunks)
	for _, c := range chunks {
		if c.Version != o.Version || c.Count != o.Chunks || c.SHA256 != o.SHA256 {
			return nil, fmt.Errorf("%w: model %s: chunk %d belongs to version %s (%d chunks, sha256 %s)", ErrInvalid, o.Version, c.Index, c.Version, c.Count, c.SHA256)
		}
		if parts[c.Index] != nil {
			return nil, fmt.Errorf("%w: model %s: chunk %d twice", ErrInvalid, o.Version, c.Index)
		}
		parts[c.Index] = c.Data
	}
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	if int64(len(out)) != o.Size || SHA256Hex(out) != o.SHA256 {
		return nil, fmt.Errorf("%w: model %s: reassembled %d bytes with sha256 %s, the offer says %d bytes, %s", ErrBadHash, o.Version, len(out), SHA256Hex(out), o.Size, o.SHA256)
	}
	return out, nil
}

// DecodeRetuneRequest parses and validates a retune request.
func DecodeRetuneRequest(data []byte) (RetuneRequest, error) {
	var r RetuneRequest
	if _, err := decodeStrict(data, RetuneSchema, retuneKeys, &r); err != nil {
		return RetuneRequest{}, err
	}
	if err := r.Validate(); err != nil {
		return RetuneRequest{}, err
	}
	return r, nil
}

// Validate checks a retune request's fields.
func (r RetuneRequest) Validate() error {
	bad := func(field string) error { return fmt.Errorf("%w: retune request %q: %s", ErrInvalid, r.ID, field) }
	switch {
	case !validID(r.ID):
		return bad("id")
	case !validID(r.Site):
		return bad("site")
	case !validID(r.Device):
		return bad("device")
	case !validVersion(r.ModelVersion):
		return bad("model_version")
	case r.Reason != "" && !printable(r.Reason, 512):
		return bad("reason")
	case len(r.FeedbackIDs) > 100000:
		return bad("feedback_ids: at most 100000")
	case r.Time.IsZero():
		return bad("time")
	}
	for _, id := range r.FeedbackIDs {
		if !validID(id) {
			return bad("feedback_ids")
		}
	}
	return nil
}

// Encode marshals an event with its schema set.
func (e RetuneEvent) Encode() ([]byte, error) {
	e.Schema = RetuneEventSchema
	return json.Marshal(e)
}
