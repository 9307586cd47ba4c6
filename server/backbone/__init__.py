"""The operator's pretraining of the federation's reward-model backbone on public data
(``fedsecure backbone pretrain``); the folder it writes is what every client loads."""
