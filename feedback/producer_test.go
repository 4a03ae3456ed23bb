package feedback

import (
	"context"
	"testing"
	"time"
)

func TestProducerSelectsEncodesAndRemembers(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, "")
	ob, err := NewOutbox(ctx, db.DB, OutboxConfig{})
	if err != nil {
		t.Fatal(err)
	}
	labels, _ := NewLabels(ctx, db.DB, LabelsConfig{})
	clk := &fakeClock{t: time.Date(2026, 11, 28, 9, 0, 0, 0, time.UTC)}
	sel := NewSelector(SelectorConfig{Threshold: 0.5, RandomRate: 1e-9, Now: clk.Now})
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
	s, err := DecodeSample(pend[0].Payload)
	if err != nil {
		t.Fatal(err)
	}
	if s.LabelPredicted != LabelParasitized || s.Reason != ReasonUncertainty || s.SlideHash != SlideHash("PATIENT-042-S-1", []byte("0123456789abcdef")) {
		t.Fatalf("sample %+v", s)
	}
	for _, leak := range []string{"PATIENT", "042", "S-1"} {
		if containsFold(pend[0].Payload, leak) {
			t.Fatalf("payload leaks %q", leak)
		}
	}
	// The label for it is accepted; the same cell offered again is one record.
	if err := labels.Put(ctx, Label{FeedbackID: id, Label: LabelUninfected, Who: "t", Time: clk.Now()}); err != nil {
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
