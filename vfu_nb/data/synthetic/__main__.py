"""``python -m vfu_nb.data.synthetic``: the generator's command line (:func:`vfu_nb.data.synthetic.driver.main`)."""

from vfu_nb.data.synthetic.driver import main

if __name__ == "__main__":
    main()
