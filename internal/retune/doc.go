// Package retune turns labelled feedback and the incumbent bundle into a
// new signed bundle, or into a refusal that says why. It owns the retune
// output folder (the snapshot, the cached features, the study, the bundle,
// the decision) and the order of the steps, which is the method:
//
//  1. Snapshot. The labelled folders are read and content-addressed
//     (tuning.NewSnapshot); each domain (the incumbent's nominal data, the
//     new feedback) is split by whole slides, or whole devices where at
//     least three are known, into train, validation and test. Too few
//     labels, fewer than three slides in a domain or a missing class
//     refuse the retune here, before anything is trained.
//  2. Features. Every image goes through the incumbent's backbone once;
//     the incumbent's own scores come from the same pass, so the
//     comparison in step 5 is on identical inputs.
//  3. Study. The head is tuned on the train and validation rows only
//     (tuning.HeadObjectiveOn): exploration, exploitation, finalists
//     rerun on replicate seeds. The test rows never enter a trial.
//  4. Choice. The finalist with the best mean over its replicates wins;
//     its best replicate is retrained (tuning.TrainHead reproduces it
//     exactly, which is checked) and its threshold chosen on validation by
//     the recipe's rule (fewest misclassified cells, ties nearest 0.5).
//  5. Sealed test. The snapshot's test split is evaluated once, for the
//     chosen model only, after the ledger has recorded that it will be
//     (tuning.Ledger): a second model on the same snapshot is refused.
//     New and incumbent are compared on the same test cells with a paired
//     bootstrap over slides, overall and per domain.
//  6. Decision. The new model must be better than the incumbent on the
//     whole test split (the 95% interval of the accuracy difference above
//     0), must not forget the nominal domain (its accuracy there at most
//     one point below the incumbent's), and the inputs must not have
//     changed since step 1. Otherwise the retune is refused: the report
//     and the decision are written, no bundle is.
//  7. Bundle. The incumbent's backbone, the new head, the threshold, a
//     baseline.json built from the test split as `scopewatch baseline`
//     builds one (with the incumbent's detector configuration), and
//     MODEL_CARD.md, sealed with the fleet key and verified as a device
//     would verify it.
//
// Only the head is retrained; the backbone is the incumbent's. The card
// says so.
package retune
