package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

func testOffer() ModelOffer {
	return ModelOffer{Site: "lab-1", Name: "scopewatch-default", Version: "2026.12.03-1_0a1b2c3d", Incumbent: "2026.11.28-2",
		ManifestSHA256: strings.Repeat("b", 64), Signer: "VJkK1V3C6Sl1ntcKEto6RT+/GgizpaW6TefTVB1wtj0=", Request: "retune-dev-1-1",
		Created: time.Date(2026, 12, 3, 15, 0, 0, 0, time.UTC)}
}

// TestModelChunksRoundTrip: an archive split into chunk payloads, each
// within MaxPayload, decoded and reassembled in any order is the archive;
// a chunk changed in transit is caught by the whole-archive hash.
func TestModelChunksRoundTrip(t *testing.T) {
	archive := make([]byte, 3*ModelChunkData+1234)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range archive {
		archive[i] = byte(r.IntN(256))
	}
	o := testOffer()
	payloads, err := SplitModel(&o, archive)
	if err != nil {
		t.Fatal(err)
	}
	if o.Chunks != 4 || len(payloads) != 4 || o.Size != int64(len(archive)) || o.SHA256 != SHA256Hex(archive) {
		t.Fatalf("offer %+v, %d payloads", o, len(payloads))
	}
	op, err := o.Encode()
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeModelOffer(op)
	if err != nil || back.Version != o.Version || back.SHA256 != o.SHA256 {
		t.Fatalf("offer round trip: %+v %v", back, err)
	}
	var chunks []ModelChunk
	for _, i := range []int{2, 0, 3, 1} {
		if len(payloads[i]) > MaxPayload {
			t.Fatalf("chunk %d is %d bytes, above MaxPayload %d", i, len(payloads[i]), MaxPayload)
		}
		c, err := DecodeModelChunk(payloads[i])
		if err != nil {
			t.Fatalf("chunk %d: %v", i, err)
		}
		chunks = append(chunks, c)
	}
	got, err := AssembleModel(back, chunks)
	if err != nil || !bytes.Equal(got, archive) {
		t.Fatalf("reassembled %d bytes, err %v", len(got), err)
	}
	chunks[1].Data = append([]byte(nil), chunks[1].Data...)
	chunks[1].Data[7] ^= 1
	if _, err := AssembleModel(back, chunks); !errors.Is(err, ErrBadHash) {
		t.Fatalf("a flipped bit: %v, want ErrBadHash", err)
	}
	if _, err := AssembleModel(back, chunks[:3]); !errors.Is(err, ErrInvalid) {
		t.Fatalf("a missing chunk: %v", err)
	}
	dup := append([]ModelChunk{}, chunks[:3]...)
	dup = append(dup, chunks[0])
	if _, err := AssembleModel(back, dup); !errors.Is(err, ErrInvalid) {
		t.Fatalf("a chunk twice: %v", err)
	}
}

func TestModelOfferRefused(t *testing.T) {
	for _, c := range []struct {
		name string
		mut  func(*ModelOffer)
	}{
		{"version with a wildcard", func(o *ModelOffer) { o.Version = "2026.12.03-1+x" }},
		{"upper-case version", func(o *ModelOffer) { o.Version = "V1" }},
		{"version naming a parent folder", func(o *ModelOffer) { o.Version = ".." }},
		{"version starting with a dot", func(o *ModelOffer) { o.Version = ".hidden" }},
		{"chunks disagree with size", func(o *ModelOffer) { o.Chunks++ }},
		{"no sha256", func(o *ModelOffer) { o.SHA256 = "" }},
		{"no created", func(o *ModelOffer) { o.Created = time.Time{} }},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := testOffer()
			if _, err := SplitModel(&o, []byte("tiny archive")); err != nil {
				t.Fatal(err)
			}
			c.mut(&o)
			if _, err := o.Encode(); !errors.Is(err, ErrInvalid) {
				t.Fatalf("Encode: %v, want ErrInvalid", err)
			}
		})
	}
}

func TestDecodeRetuneRequest(t *testing.T) {
	ok := RetuneRequest{Schema: RetuneSchema, ID: "retune-dev-1-1", Site: "lab-1", Device: "dev-1", ModelVersion: "2026.11.28-2",
		Reason: "drift alarm", Evidence: map[string]float64{"alarms": 3}, FeedbackIDs: []string{"fb-1"}, Time: time.Now().UTC()}
	raw, _ := json.Marshal(ok)
	if r, err := DecodeRetuneRequest(raw); err != nil || r.ID != ok.ID {
		t.Fatalf("valid request: %+v %v", r, err)
	}
	for _, bad := range []string{
		`{"schema":"scopewatch.retune/v1"}`,
		strings.Replace(string(raw), `"site":"lab-1"`, `"site":"lab/1"`, 1),
		strings.Replace(string(raw), `"schema"`, `"extra":1,"schema"`, 1),
		strings.Replace(string(raw), `"model_version":"2026.11.28-2"`, `"model_version":"#"`, 1),
	} {
		if _, err := DecodeRetuneRequest([]byte(bad)); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
}

func FuzzDecodeModelOffer(f *testing.F) {
	o := testOffer()
	SplitModel(&o, []byte("archive"))
	b, _ := o.Encode()
	f.Add(b)
	f.Add([]byte(`{"schema":"scopewatch.model.offer/v1","chunks":-1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		o, err := DecodeModelOffer(data)
		if err == nil {
			if err := o.Validate(); err != nil || !validVersion(o.Version) {
				t.Fatalf("accepted offer does not validate: %v", err)
			}
		}
	})
}

func FuzzDecodeModelChunk(f *testing.F) {
	o := testOffer()
	ps, _ := SplitModel(&o, []byte("archive"))
	f.Add(ps[0])
	f.Add([]byte(`{"schema":"scopewatch.model.chunk/v1","index":3,"count":2}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := DecodeModelChunk(data)
		if err == nil && (c.Index < 0 || c.Index >= c.Count || len(c.Data) == 0 || len(c.Data) > ModelChunkData) {
			t.Fatalf("accepted bad chunk %+v", c)
		}
	})
}

func FuzzDecodeRetuneRequest(f *testing.F) {
	f.Add([]byte(`{"schema":"scopewatch.retune/v1","id":"r-1","site":"s","device":"d","model_version":"1","reason":"","evidence":{},"feedback_ids":[],"time":"2026-12-03T10:00:00Z"}`))
	f.Add([]byte(`{"schema":"scopewatch.retune/v1","id":"r-1","id":"r-2"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := DecodeRetuneRequest(data)
		if err == nil {
			if err := r.Validate(); err != nil {
				t.Fatalf("accepted request does not validate: %v", err)
			}
		}
	})
}
