// Package retunetest fills a collector dataset with labelled feedback for
// the retune worker's tests: the crops of synthetic labelled folders sent
// as devices send feedback and labelled as operators label it.
package retunetest

import (
	"context"
	"encoding/csv"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/scopewatch/scopewatch/feedback"
	"github.com/scopewatch/scopewatch/feedback/wire"
)

// FillDataset stores the crops of dirs (each with a labels.csv
// path,label,slide) in the collector c as feedback of site from devices
// dev-1 and dev-2 (alternating), each with its label.
func FillDataset(t testing.TB, c *feedback.Collector, site string, dirs ...string) {
	t.Helper()
	ctx := context.Background()
	at := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	for _, dir := range dirs {
		f, err := os.Open(filepath.Join(dir, "labels.csv"))
		if err != nil {
			t.Fatal(err)
		}
		rows, err := csv.NewReader(f).ReadAll()
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		for i, r := range rows[1:] {
			crop, err := os.ReadFile(filepath.Join(dir, r[0]))
			if err != nil {
				t.Fatal(err)
			}
			dev := []string{"dev-1", "dev-2"}[i%2]
			s := wire.Sample{Device: dev, Site: site, SlideHash: wire.SlideHash(r[2], []byte("secret-"+dev)), PParasitized: 0.5,
				LabelPredicted: wire.LabelUninfected, ModelVersion: "2026.11.28-2", Time: at.Add(time.Duration(i) * time.Second), Reason: wire.ReasonDrift}
			s.ID = wire.SampleID(s.Device, s.SlideHash, wire.SHA256Hex(crop), s.ModelVersion)
			recs, err := feedback.SampleRecords("scopewatch/v1/"+site+"/"+dev+"/feedback", s, crop)
			if err != nil {
				t.Fatal(err)
			}
			for _, rec := range recs {
				if err := c.Handle(ctx, rec.Topic, rec.Payload); err != nil {
					t.Fatal(err)
				}
			}
			l, err := wire.Label{FeedbackID: s.ID, Label: r[1], Who: "tech", Time: at.Add(time.Hour)}.Encode()
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Handle(ctx, "scopewatch/v1/"+site+"/"+dev+"/label", l); err != nil {
				t.Fatal(err)
			}
		}
	}
}
