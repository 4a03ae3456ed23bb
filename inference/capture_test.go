package inference

import (
	"bytes"
	"errors"
	"image"
	"image/png"
	"path/filepath"
	"testing"

	"gocv.io/x/gocv"
)

func TestCaptureVideoFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "clip.avi")
	w, err := gocv.VideoWriterFile(p, "MJPG", 5, 64, 48, true)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		m := gocv.NewMatWithSize(48, 64, gocv.MatTypeCV8UC3)
		m.SetTo(gocv.NewScalar(float64(40*i), 100, 200, 0))
		if err := w.Write(m); err != nil {
			t.Fatal(err)
		}
		m.Close()
	}
	w.Close()
	c, err := OpenCapture(p)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Live() {
		t.Fatal("a file is not live")
	}
	n := 0
	for {
		data, err := c.Frame()
		if errors.Is(err, ErrEndOfStream) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(bytes.NewReader(data))
		if err != nil {
			t.Fatalf("frame %d is not a PNG: %v", n, err)
		}
		if img.Bounds() != image.Rect(0, 0, 64, 48) {
			t.Fatalf("frame %d bounds %v", n, img.Bounds())
		}
		n++
	}
	if n != 3 {
		t.Fatalf("%d frames, want 3", n)
	}
	c.Close()
	if _, err := c.Frame(); !errors.Is(err, ErrClosed) {
		t.Fatalf("frame after close: %v", err)
	}
}

func TestCaptureMissingSource(t *testing.T) {
	if _, err := OpenCapture(filepath.Join(t.TempDir(), "none.avi")); err == nil {
		t.Fatal("opened a missing file")
	}
	if _, err := OpenCapture("/dev/video99"); err == nil {
		t.Fatal("opened a missing device")
	}
	for s, want := range map[string]bool{"/dev/video0": true, "2": true, "clip.avi": false, "/dev/video": false} {
		if _, ok := deviceIndex(s); ok != want {
			t.Errorf("deviceIndex(%q) = %v", s, ok)
		}
	}
}
