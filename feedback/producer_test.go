package feedback

import (
	"bytes"
	"context"
	"errors"
	"github.com/scopewatch/scopewatch/internal/testutil"
	"testing"
	"time"

	"github.com/scopewatch/scopewatch/feedback/selection"
	"github.com/scopewatch/scopewatch/feedback/wire"
)

func TestProducerSelectsEncodesAndRemembers(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, "")
	ob, err := NewOutbox(ctx, db.DB, OutboxConfig{})
	if err != nil {
		t.Fatal(err)
	}
	labels, _ := NewLabels(ctx, db.DB, LabelsConfig{})
	clk := testutil.NewClock(time.Date(2026, 11, 28, 9, 0, 0, 0, time.UTC))
	sel := selection.New(selection.Config{Threshold: 0.5, RandomRate: 1e-9, Now: clk.Now})
	if _, err := NewProducer(ProducerConfig{Site: "lab", Device: "dev-1", DeviceSecret: []byte("short"), ModelVersion: "v"}, sel, ob, labels); err == nil {
		t.Fatal("short secret accepted")
	}
	p, err := NewProducer(ProducerConfig{Site: "lab", Device: "dev-1", DeviceSecret: []byte("0123456789abcdef"), ModelVersion: "2026.11.0", Now: clk.Now}, sel, ob, labels)
	if err != nil {
		t.Fatal(err)
	}
	p.StartWindow(false)
	crop := testPNG(t, 10, 10, 9)
	if _, ok, err := p.Offer(ctx, 1, Cell{SlideID: "S-1", Crop: crop, P: 0.02}); ok || err != nil {
		t.Fatalf("confident cell selected: %v %v", ok, err)
	}
	id, ok, err := p.Offer(ctx, 1, Cell{SlideID: "PATIENT-042-S-1", Crop: crop, P: 0.55})
	if !ok || err != nil {
		t.Fatalf("uncertain cell not selected: %v %v", ok, err)
	}
	pend, _ := ob.Pending(ctx, 10)
	if len(pend) != 1 || pend[0].ID != id || pend[0].Topic != "scopewatch/v1/lab/dev-1/feedback" {
		t.Fatalf("pending %+v", pend)
	}
	s, err := wire.DecodeSample(pend[0].Payload)
	if err != nil {
		t.Fatal(err)
	}
	if s.LabelPredicted != wire.LabelParasitized || s.Reason != wire.ReasonUncertainty || s.SlideHash != wire.SlideHash("PATIENT-042-S-1", []byte("0123456789abcdef")) {
		t.Fatalf("sample %+v", s)
	}
	for _, leak := range []string{"PATIENT", "042", "S-1"} {
		if containsFold(pend[0].Payload, leak) {
			t.Fatalf("payload leaks %q", leak)
		}
	}
	// The label for it is accepted; the same cell offered again is one record.
	if err := labels.Put(ctx, wire.Label{FeedbackID: id, Label: wire.LabelUninfected, Who: "t", Time: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	p.Offer(ctx, 1, Cell{SlideID: "PATIENT-042-S-1", Crop: crop, P: 0.55})
	if n, _ := ob.Depth(); n != 1 {
		t.Fatalf("depth %d after re-offering the same cell", n)
	}
}

func containsFold(b []byte, s string) bool {
	for i := 0; i+len(s) <= len(b); i++ {
		match := true
		for j := 0; j < len(s); j++ {
			c1, c2 := b[i+j], s[j]
			if c1|0x20 != c2|0x20 {
				match = false
				break
			}
		}
		if match {
			return true
		}
	}
	return false
}

// TestProducerCleansOnlySelectedCells: Clean runs for selected cells only,
// what it returns is what is sent, the day's budget is charged with the
// cleaned size, and a Clean failure is reported without a sample.
func TestProducerCleansOnlySelectedCells(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, "")
	ob, err := NewOutbox(ctx, db.DB, OutboxConfig{})
	if err != nil {
		t.Fatal(err)
	}
	// Clean turns a one-byte stand-in into a distinct real PNG.
	cleanedPNG := map[byte][]byte{}
	for i := range byte(3) {
		cleanedPNG[i] = testPNG(t, 20, 20, uint64(i)+50)
	}
	var cleaned int
	clean := func(b []byte) ([]byte, error) {
		cleaned++
		return cleanedPNG[b[0]], nil
	}
	clk := testutil.NewClock(time.Date(2026, 11, 28, 9, 0, 0, 0, time.UTC))
	// The first two cleaned crops fill the day: the third is refused.
	budget := len(cleanedPNG[0]) + len(cleanedPNG[1])
	sel := selection.New(selection.Config{Threshold: 0.5, RandomRate: 1e-9, DailyBytes: int64(budget), Now: clk.Now})
	p, err := NewProducer(ProducerConfig{Site: "lab", Device: "dev-1", DeviceSecret: []byte("0123456789abcdef"), ModelVersion: "2026.11.0", Now: clk.Now}, sel, ob, nil)
	if err != nil {
		t.Fatal(err)
	}
	p.StartWindow(false)
	for range 50 {
		p.Offer(ctx, 1, Cell{SlideID: "S", Crop: []byte{0}, P: 0.01, Clean: clean})
	}
	if cleaned != 0 {
		t.Fatalf("Clean ran %d times for confident cells that were not selected", cleaned)
	}
	for i := range byte(3) {
		_, ok, err := p.Offer(ctx, 1, Cell{SlideID: "S", Crop: []byte{i}, P: 0.5, Clean: clean})
		if err != nil || ok != (i < 2) {
			t.Errorf("uncertain cell %d: sent %v, err %v; want the third refused by the day's budget", i, ok, err)
		}
	}
	pend, _ := ob.Pending(ctx, 10)
	if len(pend) != 2 {
		t.Fatalf("%d pending, want 2", len(pend))
	}
	for i, r := range pend {
		s, err := wire.DecodeSample(r.Payload)
		if err != nil {
			t.Fatal(err)
		}
		if want := wire.SHA256Hex(cleanedPNG[byte(i)]); s.Crop.SHA256 != want || s.Crop.Bytes != len(cleanedPNG[byte(i)]) {
			t.Errorf("sample %d carries %s (%d bytes), want the cleaned crop %s", i, s.Crop.SHA256, s.Crop.Bytes, want)
		}
	}
	clk.Add(24 * time.Hour)
	boom := errors.New("not an image")
	if _, ok, err := p.Offer(ctx, 1, Cell{SlideID: "S", Crop: []byte{0}, P: 0.5, Clean: func([]byte) ([]byte, error) { return nil, boom }}); ok || !errors.Is(err, boom) {
		t.Fatalf("failed Clean: sent %v, err %v", ok, err)
	}
}

// TestSampleRecordsOneDropGroup: a chunked sample becomes feedback records
// at QoS 1 on the topic, all in the sample's drop group, in wire order.
func TestSampleRecordsOneDropGroup(t *testing.T) {
	crop := testPNG(t, 300, 300, 1)
	s := testSample(1)
	s.ID = wire.SampleID(s.Device, s.SlideHash, wire.SHA256Hex(crop), s.ModelVersion)
	msgs, err := s.Encode(crop)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := SampleRecords(topicFB, s, crop)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) < 2 || len(recs) != len(msgs) {
		t.Fatalf("%d records for %d messages, want a chunked sample", len(recs), len(msgs))
	}
	for i, r := range recs {
		if r.ID != msgs[i].ID || !bytes.Equal(r.Payload, msgs[i].Payload) || r.Group != s.ID || r.Kind != KindFeedback ||
			r.Topic != topicFB || r.QoS != 1 || r.Retain {
			t.Fatalf("record %d: id %q group %q kind %q topic %q qos %d retain %v", i, r.ID, r.Group, r.Kind, r.Topic, r.QoS, r.Retain)
		}
	}
}
