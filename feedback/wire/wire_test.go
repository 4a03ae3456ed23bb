package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"github.com/scopewatch/scopewatch/internal/testutil"
	"strings"
	"testing"
	"time"
)

// testPNG makes a w x h PNG of seeded noise (testutil.NoisePNG).
func testPNG(t testing.TB, w, h int, seed uint64) []byte {
	t.Helper()
	return testutil.NoisePNG(w, h, seed)
}

func testSample(i int) Sample {
	slide := SlideHash("slide-"+string(rune('a'+i%26)), []byte("device-secret"))
	return Sample{
		Device: "dev-1", Site: "lab", SlideHash: slide, PParasitized: 0.48, LabelPredicted: LabelUninfected,
		ModelVersion: "2026.11.0", Time: time.Date(2026, 11, 28, 10, 0, i, 0, time.UTC), Reason: ReasonUncertainty,
	}
}

func TestSampleRoundTripInlineAndChunked(t *testing.T) {
	for _, tc := range []struct {
		name   string
		w, h   int
		chunks int
	}{{"inline", 40, 40, 0}, {"chunked", 300, 300, 4}} {
		t.Run(tc.name, func(t *testing.T) {
			crop := testPNG(t, tc.w, tc.h, 1)
			s := testSample(1)
			s.ID = SampleID(s.Device, s.SlideHash, SHA256Hex(crop), s.ModelVersion)
			msgs, err := s.Encode(crop)
			if err != nil {
				t.Fatal(err)
			}
			if want := 1 + tc.chunks; len(msgs) != want {
				t.Fatalf("%d messages for a %d-byte crop, want %d", len(msgs), len(crop), want)
			}
			var got []byte
			for i, r := range msgs {
				if len(r.Payload) > MaxPayload {
					t.Fatalf("message %d is %d bytes", i, len(r.Payload))
				}
				if i == 0 && r.ID != s.ID {
					t.Fatalf("message 0: id %q, want the sample's %q", r.ID, s.ID)
				}
				if i == 0 {
					d, err := DecodeSample(r.Payload)
					if err != nil {
						t.Fatal(err)
					}
					if d.ID != s.ID || d.Crop.SHA256 != SHA256Hex(crop) || d.Crop.Chunks != tc.chunks {
						t.Fatalf("decoded %+v", d.Crop)
					}
					got = append(got, d.Crop.Data...)
					continue
				}
				c, err := DecodeChunk(r.Payload)
				if err != nil {
					t.Fatal(err)
				}
				if c.Index != i-1 || c.Count != tc.chunks || r.ID != ChunkID(s.ID, i-1) {
					t.Fatalf("chunk %d: %+v id %s", i, c.Index, r.ID)
				}
				got = append(got, c.Data...)
			}
			if !bytes.Equal(got, crop) {
				t.Fatal("reassembled crop differs")
			}
		})
	}
}

func TestSlideHashKeyed(t *testing.T) {
	a := SlideHash("S-2026-001", []byte("k1"))
	if a == SlideHash("S-2026-001", []byte("k2")) || a == SlideHash("S-2026-002", []byte("k1")) || !isHex64(a) {
		t.Fatal("slide hash not keyed by both slide and secret")
	}
	if strings.Contains(a, "2026") {
		t.Fatal("slide id leaks")
	}
}

func validSampleJSON(t testing.TB) []byte {
	crop := testPNG(t, 8, 8, 2)
	s := testSample(0)
	s.ID = "fb-1"
	msgs, err := s.Encode(crop)
	if err != nil {
		t.Fatal(err)
	}
	return msgs[0].Payload
}

func mutate(t *testing.T, data []byte, f func(m map[string]any)) []byte {
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	f(m)
	out, _ := json.Marshal(m)
	return out
}

func TestDecodeSampleRejects(t *testing.T) {
	good := validSampleJSON(t)
	if _, err := DecodeSample(good); err != nil {
		t.Fatalf("valid sample rejected: %v", err)
	}
	crop := func(m map[string]any) map[string]any { return m["crop"].(map[string]any) }
	cases := []struct {
		name string
		data []byte
		want error
	}{
		{"not json", []byte("{nope"), ErrBadJSON},
		{"array", []byte("[1]"), ErrBadJSON},
		{"trailing", append(append([]byte{}, good...), []byte(" {}")...), ErrBadJSON},
		{"oversize", append(good, bytes.Repeat([]byte(" "), MaxPayload)...), ErrOversize},
		{"no schema", mutate(t, good, func(m map[string]any) { delete(m, "schema") }), ErrSchema},
		{"other schema", mutate(t, good, func(m map[string]any) { m["schema"] = "scopewatch.feedback/v2" }), ErrSchema},
		{"unknown field", mutate(t, good, func(m map[string]any) { m["patient"] = "x" }), ErrInvalid},
		{"case-folded field", bytes.Replace(good, []byte(`"reason"`), []byte(`"Reason"`), 1), ErrInvalid},
		{"duplicate field", bytes.Replace(good, []byte(`"reason":"uncertainty"`), []byte(`"reason":"uncertainty","reason":"drift"`), 1), ErrInvalid},
		{"unknown crop field", mutate(t, good, func(m map[string]any) { crop(m)["x"] = 1 }), ErrInvalid},
		{"bad hash", mutate(t, good, func(m map[string]any) { crop(m)["sha256"] = strings.Repeat("0", 64) }), ErrBadHash},
		{"upper hash", mutate(t, good, func(m map[string]any) { crop(m)["sha256"] = strings.Repeat("A", 64) }), ErrInvalid},
		{"p > 1", mutate(t, good, func(m map[string]any) { m["p_parasitized"] = 1.5 }), ErrInvalid},
		{"p string", mutate(t, good, func(m map[string]any) { m["p_parasitized"] = "0.5" }), ErrBadJSON},
		{"label", mutate(t, good, func(m map[string]any) { m["label_predicted"] = "maybe" }), ErrInvalid},
		{"reason", mutate(t, good, func(m map[string]any) { m["reason"] = "fun" }), ErrInvalid},
		{"device", mutate(t, good, func(m map[string]any) { m["device"] = "Dev/1" }), ErrInvalid},
		{"slide raw id", mutate(t, good, func(m map[string]any) { m["slide_hash"] = "S-2026-001" }), ErrInvalid},
		{"no time", mutate(t, good, func(m map[string]any) { delete(m, "time") }), ErrInvalid},
		{"bad id", mutate(t, good, func(m map[string]any) { m["id"] = "a b" }), ErrInvalid},
		{"both data and chunks", mutate(t, good, func(m map[string]any) { crop(m)["chunks"] = 1 }), ErrInvalid},
		{"neither", mutate(t, good, func(m map[string]any) { delete(crop(m), "data") }), ErrInvalid},
		{"not an image", mutate(t, good, func(m map[string]any) {
			d := []byte("hello")
			crop(m)["data"], crop(m)["bytes"], crop(m)["sha256"] = d, 5, SHA256Hex(d)
		}), ErrInvalid},
		{"chunk count", mutate(t, good, func(m map[string]any) { delete(crop(m), "data"); crop(m)["chunks"] = 5 }), ErrInvalid},
	}
	for _, tc := range cases {
		if _, err := DecodeSample(tc.data); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestDecodeChunkAndLabelRejects(t *testing.T) {
	ch, _ := json.Marshal(Chunk{Schema: ChunkSchema, SampleID: "fb-1", Index: 0, Count: 1, SHA256: strings.Repeat("a", 64), Data: []byte{1, 2}})
	if _, err := DecodeChunk(ch); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]Chunk{
		"index >= count": {Schema: ChunkSchema, SampleID: "fb-1", Index: 1, Count: 1, SHA256: strings.Repeat("a", 64), Data: []byte{1}},
		"short middle":   {Schema: ChunkSchema, SampleID: "fb-1", Index: 0, Count: 2, SHA256: strings.Repeat("a", 64), Data: []byte{1}},
		"empty":          {Schema: ChunkSchema, SampleID: "fb-1", Index: 0, Count: 1, SHA256: strings.Repeat("a", 64)},
		"count":          {Schema: ChunkSchema, SampleID: "fb-1", Index: 0, Count: MaxChunks + 1, SHA256: strings.Repeat("a", 64), Data: []byte{1}},
		"schema":         {Schema: SampleSchema, SampleID: "fb-1", Index: 0, Count: 1, SHA256: strings.Repeat("a", 64), Data: []byte{1}},
	} {
		b, _ := json.Marshal(c)
		if _, err := DecodeChunk(b); err == nil {
			t.Errorf("chunk %s accepted", name)
		}
	}
	l := Label{FeedbackID: "fb-1", Label: LabelParasitized, Who: "tech@lab", Time: time.Now()}
	b, err := l.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if got, err := DecodeLabel(b); err != nil || got.FeedbackID != "fb-1" {
		t.Fatalf("label round trip: %+v %v", got, err)
	}
	for name, bad := range map[string]string{
		"label":   `{"schema":"scopewatch.label/v1","feedback_id":"fb-1","label":"sick","who":"a","time":"2026-11-28T10:00:00Z"}`,
		"who":     `{"schema":"scopewatch.label/v1","feedback_id":"fb-1","label":"uninfected","who":"","time":"2026-11-28T10:00:00Z"}`,
		"extra":   `{"schema":"scopewatch.label/v1","feedback_id":"fb-1","label":"uninfected","who":"a","time":"2026-11-28T10:00:00Z","x":1}`,
		"schema":  `{"schema":"scopewatch.label/v0","feedback_id":"fb-1","label":"uninfected","who":"a","time":"2026-11-28T10:00:00Z"}`,
		"time":    `{"schema":"scopewatch.label/v1","feedback_id":"fb-1","label":"uninfected","who":"a","time":"yesterday"}`,
		"id":      `{"schema":"scopewatch.label/v1","feedback_id":"../x","label":"uninfected","who":"a","time":"2026-11-28T10:00:00Z"}`,
		"control": `{"schema":"scopewatch.label/v1","feedback_id":"fb-1","label":"uninfected","who":"a\u0000","time":"2026-11-28T10:00:00Z"}`,
	} {
		if _, err := DecodeLabel([]byte(bad)); err == nil {
			t.Errorf("label %s accepted", name)
		}
	}
}

// The decoders take bytes from the network: they must never panic, and
// whatever they accept must re-validate.
func FuzzDecodeSample(f *testing.F) {
	f.Add(validSampleJSON(f))
	f.Add([]byte(`{"schema":"scopewatch.feedback/v1"}`))
	f.Add([]byte(`{"schema":"scopewatch.feedback/v1","crop":{"chunks":3}}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := DecodeSample(data)
		if err == nil {
			if err := s.validate(); err != nil {
				t.Fatalf("accepted sample does not validate: %v", err)
			}
		}
	})
}

func FuzzDecodeChunk(f *testing.F) {
	b, _ := json.Marshal(Chunk{Schema: ChunkSchema, SampleID: "fb-1", Index: 0, Count: 1, SHA256: strings.Repeat("a", 64), Data: []byte{1, 2}})
	f.Add(b)
	f.Add([]byte(`{"schema":"scopewatch.feedback.chunk/v1","index":-1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := DecodeChunk(data)
		if err == nil && (c.Index < 0 || c.Index >= c.Count || len(c.Data) == 0) {
			t.Fatalf("accepted bad chunk %+v", c)
		}
	})
}

func FuzzDecodeLabel(f *testing.F) {
	f.Add([]byte(`{"schema":"scopewatch.label/v1","feedback_id":"fb-1","label":"uninfected","who":"a","time":"2026-11-28T10:00:00Z"}`))
	f.Add([]byte(`{"schema":"scopewatch.label/v1","feedback_id":"fb-1","feedback_id":"fb-2"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		l, err := DecodeLabel(data)
		if err == nil {
			if err := l.Validate(); err != nil {
				t.Fatalf("accepted label does not validate: %v", err)
			}
		}
	})
}
