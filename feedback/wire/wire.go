package wire

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"time"

	"github.com/scopewatch/scopewatch/internal/mqttconn"
)

// Wire schemas (the "schema" field of every payload).
const (
	SampleSchema = "scopewatch.feedback/v1"
	ChunkSchema  = "scopewatch.feedback.chunk/v1"
	LabelSchema  = "scopewatch.label/v1"
	// RetuneSchema identifies retune request payloads.
	RetuneSchema = "scopewatch.retune/v1"
	// AlertSchema identifies alert payloads (Alert).
	AlertSchema = "scopewatch.alert/v1"
)

// MaxPayload is the largest MQTT payload we publish (DESIGN.md §3): managed
// brokers commonly refuse more. Larger blobs go in chunks (see Chunk).
const MaxPayload = 128 << 10

// Limits of the wire format.
const (
	// ChunkData is the raw crop bytes per chunk: base64 makes 120 KiB of it,
	// leaving room for the JSON envelope under MaxPayload.
	ChunkData = 90 << 10
	// MaxChunks and MaxCropBytes bound what a receiver must reassemble.
	MaxChunks    = 128
	MaxCropBytes = MaxChunks * ChunkData
)

// Labels a cell can carry, as predicted by the model or given by a person.
const (
	LabelParasitized = "parasitized"
	LabelUninfected  = "uninfected"
)

// Reasons a sample was selected.
const (
	ReasonUncertainty = "uncertainty"
	ReasonDrift       = "drift"
	ReasonRandom      = "random"
)

// Sentinel errors of the decoders; receivers count rejects by them.
var (
	ErrBadJSON  = errors.New("malformed JSON")
	ErrSchema   = errors.New("wrong or missing schema")
	ErrOversize = errors.New("message too large")
	ErrBadHash  = errors.New("hash mismatch")
	ErrInvalid  = errors.New("invalid field")
)

// Sample is one feedback sample: a cell crop and what the model said about
// it. Nothing in it identifies a patient: the slide is represented only by
// SlideHash, a keyed hash that only the device can compute.
type Sample struct {
	Schema         string    `json:"schema"`
	ID             string    `json:"id"`
	Device         string    `json:"device"`
	Site           string    `json:"site"`
	SlideHash      string    `json:"slide_hash"`
	Crop           Crop      `json:"crop"`
	PParasitized   float64   `json:"p_parasitized"`
	LabelPredicted string    `json:"label_predicted"`
	ModelVersion   string    `json:"model_version"`
	Time           time.Time `json:"time"`
	Reason         string    `json:"reason"`
}

// Crop is the cell image: inline (Data) when the sample fits in one
// message, otherwise announced here and sent in Chunks chunk messages.
type Crop struct {
	Format string `json:"format"` // "png" or "jpeg"
	SHA256 string `json:"sha256"` // of the whole image file
	Bytes  int    `json:"bytes"`
	Data   []byte `json:"data,omitempty"` // base64 in JSON
	Chunks int    `json:"chunks,omitempty"`
}

// Chunk is one piece of a crop too large to travel inline.
type Chunk struct {
	Schema   string `json:"schema"`
	SampleID string `json:"sample_id"`
	Index    int    `json:"index"`
	Count    int    `json:"count"`
	SHA256   string `json:"sha256"` // of the whole crop, to match the sample
	Data     []byte `json:"data"`
}

// Label is a person's verdict on one feedback sample.
type Label struct {
	Schema     string    `json:"schema"`
	FeedbackID string    `json:"feedback_id"`
	Label      string    `json:"label"`
	Who        string    `json:"who"`
	Time       time.Time `json:"time"`
}

// RetuneRequest asks the tuning workers for a new model.
type RetuneRequest struct {
	Schema       string             `json:"schema"`
	ID           string             `json:"id"`
	Site         string             `json:"site"`
	Device       string             `json:"device"`
	ModelVersion string             `json:"model_version"`
	Reason       string             `json:"reason"`
	Evidence     map[string]float64 `json:"evidence"`
	FeedbackIDs  []string           `json:"feedback_ids"`
	Time         time.Time          `json:"time"`
}

// Alert is every alert a device publishes on its alert topic
// (AlertSchema), whatever raised it: one shape, so that alert routing reads
// one set of fields. Kind says what happened (for example drift_alarm,
// model_rejected, db_cap, outbox_feedback_dropped); the fields of a kind's
// own detail are set for that kind only.
type Alert struct {
	Schema string `json:"schema"`
	// ID is unique per alert; receivers deduplicate by it.
	ID     string `json:"id"`
	Site   string `json:"site,omitempty"`
	Device string `json:"device,omitempty"`
	Kind   string `json:"kind"`
	// Severity is warn or error.
	Severity     string    `json:"severity"`
	Detail       string    `json:"detail"`
	ModelVersion string    `json:"model_version,omitempty"`
	Boot         int64     `json:"boot,omitempty"`
	At           time.Time `json:"at"`
	// Drift is the detector's evidence, for drift_warn and drift_alarm.
	Drift *DriftEvidence `json:"drift,omitempty"`
	// Dropped counts the feedback records dropped since the last such
	// alert, DroppedTotal over the device's life (outbox_feedback_dropped).
	Dropped      int64 `json:"dropped,omitempty"`
	DroppedTotal int64 `json:"dropped_total,omitempty"`
}

// Alert severities. Info marks news that needs no action, such as the
// end of a drift episode.
const (
	SeverityInfo  = "info"
	SeverityWarn  = "warn"
	SeverityError = "error"
)

// DriftEvidence is what a drift detector saw when it fired.
type DriftEvidence struct {
	Signal    string  `json:"signal"`
	Level     string  `json:"level"`           // warn or alarm
	Phase     string  `json:"phase,omitempty"` // start or end of the episode
	Statistic float64 `json:"statistic"`
	Threshold float64 `json:"threshold"`
	Window    int     `json:"window"`
	Index     int64   `json:"index"`
}

// SlideHash is the only slide reference that leaves a device: an HMAC-SHA256
// of the slide id under the device secret, so that samples of one slide can
// be grouped (and kept in one split) while the slide id, which can lead to
// a patient, cannot be recovered or guessed by dictionary.
func SlideHash(slideID string, deviceSecret []byte) string {
	m := hmac.New(sha256.New, deviceSecret)
	m.Write([]byte(slideID))
	return hex.EncodeToString(m.Sum(nil))
}

// SampleID is a stable id for a sample: the same crop of the same slide
// scored by the same model on the same device always gets the same id, so
// a re-selection after a restart is deduplicated.
func SampleID(device, slideHash, cropSHA256, modelVersion string) string {
	h := sha256.Sum256([]byte(device + "\x00" + slideHash + "\x00" + cropSHA256 + "\x00" + modelVersion))
	return "fb-" + hex.EncodeToString(h[:16])
}

// SHA256Hex is the lowercase hex sha256 of b.
func SHA256Hex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// CropFormat sniffs PNG or JPEG from the leading bytes.
func CropFormat(b []byte) (string, error) {
	switch {
	case bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")):
		return "png", nil
	case bytes.HasPrefix(b, []byte{0xFF, 0xD8, 0xFF}):
		return "jpeg", nil
	}
	return "", fmt.Errorf("%w: crop is neither PNG nor JPEG", ErrInvalid)
}

// Message is one payload to publish with its stable id, which receivers
// deduplicate by (and the device's outbox stores it under).
type Message struct {
	ID      string
	Payload []byte
}

// Encode encodes s with the crop image into messages: one message when the
// sample fits in MaxPayload, otherwise the sample (with Crop.Chunks set)
// followed by its chunks, which must be dropped or delivered together. s.Crop
// is filled in from crop; the other fields must already be valid.
func (s Sample) Encode(crop []byte) ([]Message, error) {
	format, err := CropFormat(crop)
	if err != nil {
		return nil, err
	}
	if len(crop) > MaxCropBytes {
		return nil, fmt.Errorf("%w: crop of %d bytes exceeds %d", ErrOversize, len(crop), MaxCropBytes)
	}
	s.Schema = SampleSchema
	s.Crop = Crop{Format: format, SHA256: SHA256Hex(crop), Bytes: len(crop), Data: crop}
	if err := s.validate(); err != nil {
		return nil, err
	}
	if p, err := json.Marshal(s); err == nil && len(p) <= MaxPayload {
		return []Message{{ID: s.ID, Payload: p}}, nil
	}
	n := (len(crop) + ChunkData - 1) / ChunkData
	s.Crop.Data, s.Crop.Chunks = nil, n
	head, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("encode sample %s: %w", s.ID, err)
	}
	msgs := []Message{{ID: s.ID, Payload: head}}
	for i := 0; i < n; i++ {
		part := crop[i*ChunkData : min(len(crop), (i+1)*ChunkData)]
		p, err := json.Marshal(Chunk{Schema: ChunkSchema, SampleID: s.ID, Index: i, Count: n, SHA256: s.Crop.SHA256, Data: part})
		if err != nil {
			return nil, fmt.Errorf("encode chunk: %w", err)
		}
		msgs = append(msgs, Message{ID: ChunkID(s.ID, i), Payload: p})
	}
	return msgs, nil
}

// ChunkID is the message id of chunk i of a sample.
func ChunkID(sampleID string, i int) string { return fmt.Sprintf("%s.c%d", sampleID, i) }

// PeekSchema returns the schema field of a JSON object without validating
// the rest, to route a message to its strict decoder.
func PeekSchema(data []byte) (string, error) {
	if len(data) > MaxPayload {
		return "", ErrOversize
	}
	var v struct {
		Schema string `json:"schema"`
	}
	if err := json.Unmarshal(data, &v); err != nil {
		return "", fmt.Errorf("%w: %v", ErrBadJSON, err)
	}
	return v.Schema, nil
}

// strictObject checks that data is exactly one JSON object whose keys are
// all in allowed, spelled exactly (encoding/json alone matches keys
// case-insensitively and lets a duplicate key silently override).
func strictObject(data []byte, allowed map[string]bool) (map[string]json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadJSON, err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, fmt.Errorf("%w: not a JSON object", ErrBadJSON)
	}
	out := map[string]json.RawMessage{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadJSON, err)
		}
		k, _ := tok.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadJSON, err)
		}
		if !allowed[k] {
			return nil, fmt.Errorf("%w: unknown field %q", ErrInvalid, k)
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("%w: field %q given twice", ErrInvalid, k)
		}
		out[k] = v
	}
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadJSON, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: data after the object", ErrBadJSON)
	}
	return out, nil
}

func keys(ks ...string) map[string]bool {
	m := map[string]bool{}
	for _, k := range ks {
		m[k] = true
	}
	return m
}

var (
	sampleKeys = keys("schema", "id", "device", "site", "slide_hash", "crop", "p_parasitized", "label_predicted", "model_version", "time", "reason")
	cropKeys   = keys("format", "sha256", "bytes", "data", "chunks")
	chunkKeys  = keys("schema", "sample_id", "index", "count", "sha256", "data")
	labelKeys  = keys("schema", "feedback_id", "label", "who", "time")
)

// decodeStrict decodes data into v after strictObject's checks and returns
// the object's raw fields, so that callers can check nested objects without
// tokenising the payload again.
func decodeStrict(data []byte, schema string, allowed map[string]bool, v any) (map[string]json.RawMessage, error) {
	if len(data) > MaxPayload {
		return nil, fmt.Errorf("%w: %d bytes > %d", ErrOversize, len(data), MaxPayload)
	}
	fields, err := strictObject(data, allowed)
	if err != nil {
		return nil, err
	}
	var got string
	if raw, ok := fields["schema"]; !ok || json.Unmarshal(raw, &got) != nil || got != schema {
		return nil, fmt.Errorf("%w: want %q", ErrSchema, schema)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadJSON, err)
	}
	return fields, nil
}

// DecodeSample parses and validates a feedback sample message; an inline
// crop is hash-checked.
func DecodeSample(data []byte) (Sample, error) {
	var s Sample
	fields, err := decodeStrict(data, SampleSchema, sampleKeys, &s)
	if err != nil {
		return Sample{}, err
	}
	raw, ok := fields["crop"]
	if !ok {
		return Sample{}, fmt.Errorf("%w: crop missing", ErrInvalid)
	}
	if _, err := strictObject(raw, cropKeys); err != nil {
		return Sample{}, fmt.Errorf("crop: %w", err)
	}
	if err := s.validate(); err != nil {
		return Sample{}, err
	}
	return s, nil
}

func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !(s[i] >= '0' && s[i] <= '9' || s[i] >= 'a' && s[i] <= 'f') {
			return false
		}
	}
	return true
}

// validID accepts 1-128 bytes of [A-Za-z0-9._-].
func validID(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func printable(s string, maxLen int) bool {
	if s == "" || len(s) > maxLen {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == '\uFFFD' {
			return false
		}
	}
	return true
}

func (s *Sample) validate() error {
	bad := func(field, want string) error {
		return fmt.Errorf("%w: sample %q: %s: %s", ErrInvalid, s.ID, field, want)
	}
	if !validID(s.ID) {
		return bad("id", "1-128 characters of A-Z a-z 0-9 . _ -")
	}
	if mqttconn.ValidateLevel(s.Device) != nil {
		return bad("device", "lowercase topic level")
	}
	if mqttconn.ValidateLevel(s.Site) != nil {
		return bad("site", "lowercase topic level")
	}
	if !isHex64(s.SlideHash) {
		return bad("slide_hash", "64 lowercase hex digits")
	}
	if math.IsNaN(s.PParasitized) || s.PParasitized < 0 || s.PParasitized > 1 {
		return bad("p_parasitized", "a number in [0, 1]")
	}
	if s.LabelPredicted != LabelParasitized && s.LabelPredicted != LabelUninfected {
		return bad("label_predicted", "parasitized or uninfected")
	}
	if !printable(s.ModelVersion, 64) {
		return bad("model_version", "1-64 printable characters")
	}
	if s.Time.IsZero() {
		return bad("time", "an RFC 3339 time")
	}
	switch s.Reason {
	case ReasonUncertainty, ReasonDrift, ReasonRandom:
	default:
		return bad("reason", "uncertainty, drift or random")
	}
	c := s.Crop
	if c.Format != "png" && c.Format != "jpeg" {
		return bad("crop.format", "png or jpeg")
	}
	if !isHex64(c.SHA256) {
		return bad("crop.sha256", "64 lowercase hex digits")
	}
	if c.Bytes <= 0 || c.Bytes > MaxCropBytes {
		return bad("crop.bytes", fmt.Sprintf("1..%d", MaxCropBytes))
	}
	switch {
	case len(c.Data) > 0 && c.Chunks == 0:
		if len(c.Data) != c.Bytes {
			return bad("crop.bytes", "the length of crop.data")
		}
		if SHA256Hex(c.Data) != c.SHA256 {
			return fmt.Errorf("%w: sample %q: crop.sha256 does not match crop.data", ErrBadHash, s.ID)
		}
		if f, err := CropFormat(c.Data); err != nil || f != c.Format {
			return bad("crop.data", "a "+c.Format+" image")
		}
	case len(c.Data) == 0 && c.Chunks > 0:
		if c.Chunks > MaxChunks || c.Chunks != (c.Bytes+ChunkData-1)/ChunkData {
			return bad("crop.chunks", fmt.Sprintf("ceil(bytes/%d), at most %d", ChunkData, MaxChunks))
		}
	default:
		return bad("crop", "exactly one of data and chunks")
	}
	return nil
}

// DecodeChunk parses and validates a chunk message.
func DecodeChunk(data []byte) (Chunk, error) {
	var c Chunk
	if _, err := decodeStrict(data, ChunkSchema, chunkKeys, &c); err != nil {
		return Chunk{}, err
	}
	switch {
	case !validID(c.SampleID):
		return Chunk{}, fmt.Errorf("%w: chunk: sample_id", ErrInvalid)
	case c.Count < 1 || c.Count > MaxChunks:
		return Chunk{}, fmt.Errorf("%w: chunk of %s: count %d not in 1..%d", ErrInvalid, c.SampleID, c.Count, MaxChunks)
	case c.Index < 0 || c.Index >= c.Count:
		return Chunk{}, fmt.Errorf("%w: chunk of %s: index %d not in 0..%d", ErrInvalid, c.SampleID, c.Index, c.Count-1)
	case !isHex64(c.SHA256):
		return Chunk{}, fmt.Errorf("%w: chunk of %s: sha256", ErrInvalid, c.SampleID)
	case len(c.Data) == 0 || len(c.Data) > ChunkData:
		return Chunk{}, fmt.Errorf("%w: chunk of %s: data must be 1..%d bytes", ErrInvalid, c.SampleID, ChunkData)
	case c.Index < c.Count-1 && len(c.Data) != ChunkData:
		return Chunk{}, fmt.Errorf("%w: chunk of %s: only the last chunk may be short", ErrInvalid, c.SampleID)
	}
	return c, nil
}

// DecodeLabel parses and validates a label message.
func DecodeLabel(data []byte) (Label, error) {
	var l Label
	if _, err := decodeStrict(data, LabelSchema, labelKeys, &l); err != nil {
		return Label{}, err
	}
	if err := l.Validate(); err != nil {
		return Label{}, err
	}
	return l, nil
}

// Validate checks a label's fields.
func (l Label) Validate() error {
	switch {
	case !validID(l.FeedbackID):
		return fmt.Errorf("%w: label: feedback_id", ErrInvalid)
	case l.Label != LabelParasitized && l.Label != LabelUninfected:
		return fmt.Errorf("%w: label for %s: label must be parasitized or uninfected", ErrInvalid, l.FeedbackID)
	case !printable(l.Who, 128):
		return fmt.Errorf("%w: label for %s: who must be 1-128 printable characters", ErrInvalid, l.FeedbackID)
	case l.Time.IsZero():
		return fmt.Errorf("%w: label for %s: time", ErrInvalid, l.FeedbackID)
	}
	return nil
}

// Encode marshals a label with its schema set.
func (l Label) Encode() ([]byte, error) {
	l.Schema = LabelSchema
	if err := l.Validate(); err != nil {
		return nil, err
	}
	return json.Marshal(l)
}
