package feedback

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"github.com/scopewatch/scopewatch/internal/testutil"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/scopewatch/scopewatch/feedback/wire"
	"github.com/scopewatch/scopewatch/internal/mqttconn"
)

type countMetrics struct {
	mu       sync.Mutex
	rejected map[string]int
	accepted map[string]int
}

func newCountMetrics() *countMetrics {
	return &countMetrics{rejected: map[string]int{}, accepted: map[string]int{}}
}
func (m *countMetrics) Rejected(r string) { m.mu.Lock(); m.rejected[r]++; m.mu.Unlock() }
func (m *countMetrics) Accepted(r string) { m.mu.Lock(); m.accepted[r]++; m.mu.Unlock() }

func openCollector(t testing.TB) (*Collector, *countMetrics) {
	t.Helper()
	m := newCountMetrics()
	c, err := OpenCollector(context.Background(), CollectorConfig{Dir: t.TempDir(), Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, m
}

func sampleRecords(t testing.TB, i int, w, h int) (wire.Sample, []byte, []Record) {
	crop := testPNG(t, w, h, uint64(i)+100)
	s := testSample(i)
	s.ID = wire.SampleID(s.Device, s.SlideHash, wire.SHA256Hex(crop), s.ModelVersion)
	recs, err := SampleRecords("scopewatch/v1/lab/dev-1/feedback", s, crop)
	if err != nil {
		t.Fatal(err)
	}
	return s, crop, recs
}

func TestCollectorStoresDedupesAndReassembles(t *testing.T) {
	ctx := context.Background()
	c, m := openCollector(t)
	_, crop, inline := sampleRecords(t, 1, 30, 30)
	for i := 0; i < 3; i++ {
		if err := c.Handle(ctx, inline[0].Topic, inline[0].Payload); err != nil {
			t.Fatal(err)
		}
	}
	_, bigCrop, chunked := sampleRecords(t, 2, 300, 300)
	// Chunks first, out of order and duplicated, then the header.
	order := []int{3, 1, 3, 4, 2, 0}
	for _, i := range order {
		if err := c.Handle(ctx, chunked[i].Topic, chunked[i].Payload); err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
	}
	st, err := c.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Samples != 2 || st.Complete != 2 || st.PendingChunks != 0 {
		t.Fatalf("stats %+v", st)
	}
	for _, sha := range []string{wire.SHA256Hex(crop), wire.SHA256Hex(bigCrop)} {
		got, err := os.ReadFile(c.ImagePath(sha, "png"))
		if err != nil || wire.SHA256Hex(got) != sha {
			t.Fatalf("image %s: %v", sha, err)
		}
	}
	if n, bad, err := c.Verify(ctx); n != 2 || len(bad) != 0 || err != nil {
		t.Fatalf("verify: %d %v %v", n, bad, err)
	}
	if m.accepted["duplicate"] != 3 { // 2 inline repeats + 1 chunk repeat
		t.Fatalf("duplicates counted %d", m.accepted["duplicate"])
	}
}

func TestCollectorRejectsMalformed(t *testing.T) {
	ctx := context.Background()
	c, m := openCollector(t)
	s, _, recs := sampleRecords(t, 3, 300, 300)
	topic := recs[0].Topic

	// A chunk whose bytes were altered: reassembly fails the hash and the
	// chunks are discarded so a good copy can still complete the sample.
	var ch wire.Chunk
	json.Unmarshal(recs[1].Payload, &ch)
	ch.Data[10] ^= 0xFF
	tampered, _ := json.Marshal(ch)
	if err := c.Handle(ctx, topic, recs[0].Payload); err != nil {
		t.Fatal(err)
	}
	if err := c.Handle(ctx, topic, tampered); err != nil {
		t.Fatal(err)
	}
	var lastErr error
	for _, r := range recs[2:] {
		lastErr = c.Handle(ctx, topic, r.Payload)
	}
	if !errors.Is(lastErr, wire.ErrBadHash) {
		t.Fatalf("tampered chunk: %v, want ErrBadHash", lastErr)
	}
	for _, r := range recs[1:] {
		if err := c.Handle(ctx, topic, r.Payload); err != nil {
			t.Fatal(err)
		}
	}
	if st, _ := c.Stats(ctx); st.Complete != 1 {
		t.Fatalf("sample not completed by good chunks after a bad copy: %+v", st)
	}

	label := func(id string) []byte {
		b, _ := wire.Label{FeedbackID: id, Label: wire.LabelParasitized, Who: "a", Time: time.Now()}.Encode()
		return b
	}
	cases := []struct {
		topic, payload, reason string
	}{
		{topic, "{", RejectBadJSON},
		{topic, `{"schema":"other/v1"}`, RejectSchema},
		{topic, string(make([]byte, wire.MaxPayload+1)), RejectOversize},
		{"scopewatch/v1/lab/dev-1", string(recs[0].Payload), RejectTopic},
		{"scopewatch/v1/lab/other-dev/feedback", string(recs[0].Payload), RejectInvalid},
		{topic, string(label(s.ID)), RejectSchema}, // a label on the feedback topic
	}
	for _, tc := range cases {
		err := c.Handle(ctx, tc.topic, []byte(tc.payload))
		if got := RejectReason(err); got != tc.reason {
			t.Errorf("payload %.40q on %s: reason %q (%v), want %q", tc.payload, tc.topic, got, err, tc.reason)
		}
	}
	for _, tc := range cases {
		if m.rejected[tc.reason] == 0 {
			t.Errorf("reason %s not counted", tc.reason)
		}
	}
	if err := c.Handle(ctx, "scopewatch/v1/lab/dev-1/label", label(s.ID)); err != nil {
		t.Fatalf("label for a known sample: %v", err)
	}
}

func TestCollectorExport(t *testing.T) {
	ctx := context.Background()
	c, _ := openCollector(t)
	var ids []string
	for i := 0; i < 4; i++ {
		s, _, recs := sampleRecords(t, 10+i, 20, 20)
		for _, r := range recs {
			if err := c.Handle(ctx, r.Topic, r.Payload); err != nil {
				t.Fatal(err)
			}
		}
		ids = append(ids, s.ID)
	}
	t0 := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	put := func(id, label, who string, at time.Time) {
		b, _ := wire.Label{FeedbackID: id, Label: label, Who: who, Time: at}.Encode()
		if err := c.Handle(ctx, "scopewatch/v1/lab/dev-1/label", b); err != nil {
			t.Fatal(err)
		}
	}
	put(ids[0], wire.LabelParasitized, "a", t0)
	put(ids[1], wire.LabelUninfected, "a", t0)
	put(ids[1], wire.LabelParasitized, "b", t0.Add(time.Minute)) // later opinion wins
	put(ids[2], wire.LabelUninfected, "a", t0)
	put(ids[2], wire.LabelParasitized, "a", t0.Add(-time.Hour)) // stale redelivery ignored
	out := t.TempDir()
	n, err := c.Export(ctx, out)
	if err != nil || n != 3 {
		t.Fatalf("export: %d rows, %v", n, err)
	}
	// A site's export holds that site's samples only.
	if n, err := c.ExportSite(ctx, t.TempDir(), "lab"); err != nil || n != 3 {
		t.Fatalf("export of site lab: %d rows, %v", n, err)
	}
	if n, err := c.ExportSite(ctx, t.TempDir(), "elsewhere"); err != nil || n != 0 {
		t.Fatalf("export of another site: %d rows, %v", n, err)
	}
	f, _ := os.Open(filepath.Join(out, "labels.csv"))
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rows[0], []string{"path", "label", "slide", "device"}) || len(rows) != 4 {
		t.Fatalf("csv: %v", rows)
	}
	labels := map[string]string{}
	for _, r := range rows[1:] {
		data, err := os.ReadFile(filepath.Join(out, r[0]))
		if err != nil {
			t.Fatal(err)
		}
		if filepath.Base(r[0]) != wire.SHA256Hex(data)+".png" || !isHex64(r[2]) || r[3] != "dev-1" {
			t.Fatalf("row %v", r)
		}
		labels[wire.SHA256Hex(data)] = r[1]
	}
	want := map[string]string{}
	var sha string
	for i, l := range []string{wire.LabelParasitized, wire.LabelParasitized, wire.LabelUninfected} {
		c.db.QueryRow(`SELECT crop_sha256 FROM collect_samples WHERE id=?`, ids[i]).Scan(&sha)
		want[sha] = l
	}
	for k, v := range want {
		if labels[k] != v {
			t.Fatalf("labels %v, want %v", labels, want)
		}
	}
}

func FuzzCollectorHandle(f *testing.F) {
	// Small seeds only: the mutator slows to a crawl on 120 KiB chunks.
	_, _, recs := sampleRecords(f, 1, 10, 10)
	f.Add(recs[0].Payload)
	ch, _ := json.Marshal(wire.Chunk{Schema: wire.ChunkSchema, SampleID: "fb-1", Index: 0, Count: 1, SHA256: wire.SHA256Hex([]byte("\x89PNG\r\n\x1a\n")), Data: []byte("\x89PNG\r\n\x1a\n")})
	f.Add(ch)
	f.Add([]byte(`{"schema":"scopewatch.label/v1","feedback_id":"x","label":"uninfected","who":"a","time":"2026-11-28T10:00:00Z"}`))
	c, _ := openCollector(f)
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, topic := range []string{"scopewatch/v1/lab/dev-1/feedback", "scopewatch/v1/lab/dev-1/label"} {
			err := c.Handle(ctx, topic, data)
			if err != nil && RejectReason(err) == "" {
				t.Fatalf("local error for a bad message: %v", err)
			}
		}
	})
}

func TestCollectorPrunesOrphanChunks(t *testing.T) {
	ctx := context.Background()
	clk := testutil.NewClock(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC))
	c, err := OpenCollector(ctx, CollectorConfig{Dir: t.TempDir(), Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _, recs := sampleRecords(t, 5, 300, 300)
	for _, r := range recs[1:3] { // two chunks, no header
		if err := c.Handle(ctx, r.Topic, r.Payload); err != nil {
			t.Fatal(err)
		}
	}
	if n, _ := c.PruneChunks(ctx, ChunkMaxAge); n != 0 {
		t.Fatalf("pruned %d fresh chunks", n)
	}
	clk.Add(ChunkMaxAge + time.Minute)
	if n, _ := c.PruneChunks(ctx, ChunkMaxAge); n != 2 {
		t.Fatalf("pruned %d, want 2", n)
	}
}

// TestCollectorTopicRoot: a collector configured with a fleet's own topic
// root takes samples published under it and rejects the default root's.
func TestCollectorTopicRoot(t *testing.T) {
	ctx := context.Background()
	topics, err := mqttconn.NewTopics("acme/scopewatch/v1")
	if err != nil {
		t.Fatal(err)
	}
	c, err := OpenCollector(ctx, CollectorConfig{Dir: t.TempDir(), Topics: topics})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	crop := testPNG(t, 30, 30, 7)
	s := testSample(7)
	s.ID = wire.SampleID(s.Device, s.SlideHash, wire.SHA256Hex(crop), s.ModelVersion)
	topic, err := topics.Device("lab", "dev-1", mqttconn.KindFeedback)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := SampleRecords(topic, s, crop)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Handle(ctx, "scopewatch/v1/lab/dev-1/feedback", recs[0].Payload); !errors.Is(err, mqttconn.ErrTopic) {
		t.Fatalf("default-root topic: %v, want ErrTopic", err)
	}
	if err := c.Handle(ctx, recs[0].Topic, recs[0].Payload); err != nil {
		t.Fatal(err)
	}
	st, err := c.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Samples != 1 {
		t.Fatalf("stats %+v, want 1 sample", st)
	}
}

// TestCollectorPendingLabels: a label that overtakes its sample (or whose
// sample went to another worker) waits, is applied when the sample comes,
// and is pruned after its maximum age; the pending set is bounded.
func TestCollectorPendingLabels(t *testing.T) {
	ctx := context.Background()
	clk := testutil.NewClock(time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC))
	m := newCountMetrics()
	c, err := OpenCollector(ctx, CollectorConfig{Dir: t.TempDir(), Now: clk.Now, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const labelTopic = "scopewatch/v1/lab/dev-1/label"
	label := func(id, who, l string) []byte {
		b, err := wire.Label{FeedbackID: id, Label: l, Who: who, Time: clk.Now()}.Encode()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	s, _, recs := sampleRecords(t, 31, 20, 20)
	if err := c.Handle(ctx, labelTopic, label(s.ID, "a", wire.LabelParasitized)); err != nil {
		t.Fatalf("label before its sample: %v", err)
	}
	if err := c.Handle(ctx, labelTopic, label("fb-elsewhere", "a", wire.LabelUninfected)); err != nil {
		t.Fatalf("label of a sample another worker has: %v", err)
	}
	if st, _ := c.Stats(ctx); st.PendingLabels != 2 || st.Labelled != 0 || m.accepted["label_pending"] != 2 {
		t.Fatalf("before the sample: %+v, accepted %v", st, m.accepted)
	}
	for _, r := range recs {
		if err := c.Handle(ctx, r.Topic, r.Payload); err != nil {
			t.Fatal(err)
		}
	}
	st, _ := c.Stats(ctx)
	if st.Labelled != 1 || st.PendingLabels != 1 {
		t.Fatalf("after the sample: %+v", st)
	}
	var got string
	if err := c.DB().QueryRow(`SELECT label FROM collect_labels WHERE feedback_id=?`, s.ID).Scan(&got); err != nil || got != wire.LabelParasitized {
		t.Fatalf("applied label %q, %v", got, err)
	}
	clk.Add(PendingLabelMaxAge + time.Hour)
	if n, err := c.PrunePendingLabels(ctx, PendingLabelMaxAge); err != nil || n != 1 {
		t.Fatalf("pruned %d, %v; want the one whose sample never came", n, err)
	}
	// The bound: past MaxPendingLabels the oldest pending label gives way.
	if _, err := c.DB().Exec(`WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < ?)
		INSERT INTO collect_pending_labels SELECT 'fb-' || i, 'a', 'parasitized', '2026-11-28T00:00:00Z', i FROM n`, MaxPendingLabels); err != nil {
		t.Fatal(err)
	}
	if err := c.Handle(ctx, labelTopic, label("fb-one-more", "a", wire.LabelUninfected)); err != nil {
		t.Fatalf("label past the bound: %v", err)
	}
	var n, oldest, newest int
	c.DB().QueryRow(`SELECT COUNT(*), SUM(feedback_id = 'fb-1'), SUM(feedback_id = 'fb-one-more') FROM collect_pending_labels`).Scan(&n, &oldest, &newest)
	if n != MaxPendingLabels || oldest != 0 || newest != 1 {
		t.Fatalf("pending %d (want %d), oldest kept %d, newest kept %d", n, MaxPendingLabels, oldest, newest)
	}
}
