// Package inference owns everything between an image file and a class
// probability: model bundles (manifest, hashes, signature, loading),
// image decoding and preprocessing, the ONNX Runtime engine, the classifier
// head that runs in Go on the backbone's features, and the segmentation of
// whole thin-smear fields into cells.
//
// It is the only package that imports gocv (OpenCV) and onnxruntime_go;
// everything else sees plain Go values (probabilities, labels, feature
// vectors) so that drift, feedback and tuning stay free of cgo.
package inference
